"""New sentences from candidates: each eligible word replaced by a random candidate with probability p."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..glove import NeighbourIndex
from .candidates import MaskedLMCandidates
from .words import DEFAULT_N, DEFAULT_P, DEFAULT_SEED, WordSplitter, check_settings, is_eligible

log = logging.getLogger(__name__)


@dataclass
class Augmented:
    """One sentence's augmentation: its words, each eligible word's candidates, the new sentences."""

    words: list[str]
    candidates: dict[int, list[str]]
    sentences: list[str]


class Augmentor:
    """Makes up to `n` new sentences per sentence. Without `mlm` every eligible word uses GloVe."""

    def __init__(
        self,
        glove: NeighbourIndex,
        mlm: MaskedLMCandidates | None = None,
        *,
        n: int = DEFAULT_N,
        p: float = DEFAULT_P,
        seed: int = DEFAULT_SEED,
        lowercase: bool | None = None,
    ):
        check_settings(n=n, p=p, seed=seed)
        self.glove, self.mlm, self.n, self.p, self.seed = glove, mlm, n, p, seed
        if lowercase is None:
            lowercase = mlm.lowercase if mlm is not None else True
        self.split = WordSplitter(lowercase)

    def candidates(self, sentences: Sequence[Sequence[str]]) -> list[dict[int, list[str]]]:
        """Per sentence of words: {word index: candidates} for eligible words with at least one candidate."""
        eligible = [[i for i, w in enumerate(words) if is_eligible(w)] for words in sentences]
        glove_words: list[tuple[int, int]] = []  # (sentence, word) pairs answered by GloVe
        mlm_queries: list[tuple[int, int, tuple[list[int], int]]] = []
        if self.mlm is None:
            glove_words = [(s, i) for s, idx in enumerate(eligible) for i in idx]
        else:
            pieces = self.mlm.pieces([words for words, idx in zip(sentences, eligible)])
            for s, ((ids, positions), idx) in enumerate(zip(pieces, eligible)):
                for i in idx:
                    if len(positions[i]) == 1:
                        mlm_queries.append((s, i, (ids, positions[i][0])))
                    elif len(positions[i]) > 1:
                        glove_words.append((s, i))
        out: list[dict[int, list[str]]] = [{} for _ in sentences]
        if mlm_queries:
            for (s, i, _), cands in zip(mlm_queries, self.mlm.predict([q for _, _, q in mlm_queries])):
                out[s][i] = cands
        self.glove.prefetch(_glove_key(sentences[s][i], self.glove) for s, i in glove_words)
        for s, i in glove_words:
            word = sentences[s][i]
            cands = self.glove.neighbours(_glove_key(word, self.glove))
            out[s][i] = [c.title() for c in cands] if word.istitle() else list(cands)
        return [{i: c for i, c in sorted(d.items()) if c} for d in out]

    def sample(
        self, words: Sequence[str], candidates: dict[int, list[str]], key: int, original: str | None = None
    ) -> list[str]:
        """The distinct new sentences for one example (seeded by (seed, key)), never the original."""
        if self.n == 0 or not candidates:
            return []
        rng = np.random.default_rng([self.seed, key])
        positions = sorted(candidates)
        sizes = np.array([len(candidates[i]) for i in positions])
        picks = rng.integers(0, sizes, size=(self.n, len(positions)))
        replace = rng.random((self.n, len(positions))) < self.p
        seen = {" ".join(words)} | ({original} if original is not None else set())
        new = []
        for pick_row, replace_row in zip(picks.tolist(), replace.tolist()):
            sentence = list(words)
            for position, pick, swap in zip(positions, pick_row, replace_row):
                if swap:
                    sentence[position] = candidates[position][pick]
            text = " ".join(sentence)
            if text not in seen:
                seen.add(text)
                new.append(text)
        return new

    def augment(self, sentences: Sequence[str], keys: Sequence[int] | None = None) -> list[Augmented]:
        """Augment many sentences at once; keys[i] (default i) seeds sentence i's sampling."""
        keys = range(len(sentences)) if keys is None else keys
        words = [self.split(s) for s in sentences]
        cands = self.candidates(words)
        return [Augmented(w, c, self.sample(w, c, k, original=s)) for s, w, c, k in zip(sentences, words, cands, keys)]


def _glove_key(word: str, glove: NeighbourIndex) -> str:
    """GloVe 6B is lower-case: look a cased word up as itself, else lower-cased."""
    return word if word in glove or word.lower() not in glove else word.lower()
