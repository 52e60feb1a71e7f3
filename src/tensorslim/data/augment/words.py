"""Which words TinyBERT's augmentation replaces, how sentences split into words, and the defaults."""

from __future__ import annotations

import logging
import re
from importlib import resources

from ...errors import TensorslimError

log = logging.getLogger(__name__)

#: New sentences per original (TinyBERT's defaults); other tasks use DEFAULT_N.
TASK_N = {"CoLA": 30, "MNLI": 10, "MRPC": 30, "SST-2": 20, "STS-B": 30, "QQP": 10, "QNLI": 20, "RTE": 30}
DEFAULT_N, DEFAULT_P, DEFAULT_M, DEFAULT_SEED = 20, 0.4, 15, 42
DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE = 64, 1000
OUTPUT_NAME = "train_aug.tsv"
STATE_VERSION = 1

_ALPHABETIC = re.compile(r"[a-z]+")


def _load_stop_words() -> frozenset[str]:
    text = resources.files("tensorslim.data").joinpath("resources/stopwords.txt").read_text(encoding="utf-8")
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
