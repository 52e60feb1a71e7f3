"""The teacher's tokenizer: loading and checking it, its fingerprint, and `Vocab`, what the recipe needs."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import TensorslimError


@dataclass
class Vocab:
    """What the recipe needs from a WordPiece tokenizer, in a picklable/array form."""

    tokenizer_json: str
    tokens: list[str]
    cls_id: int
    sep_id: int
    mask_id: int
    is_continuation: np.ndarray  # bool [vocab]: the token is a "##" piece
    random_ids: np.ndarray  # int [n]: ids a masked token may be replaced by (no special/[unused] tokens)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocab:
        vocab = tokenizer.get_vocab()
        tokens = [""] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            tokens[index] = token
        special = set(tokenizer.all_special_ids)
        reserved = re.compile(r"^\[.+\]$")
        is_cont = np.array([len(t) > 2 and t.startswith("##") for t in tokens], dtype=bool)
        random_ids = np.array(
            [i for i, t in enumerate(tokens) if i not in special and t and not reserved.match(t)], dtype=np.int64
        )
        return cls(
            tokenizer.backend_tokenizer.to_str(),
            tokens,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
            tokenizer.mask_token_id,
            is_cont,
            random_ids,
        )


def load_tokenizer(tokenizer_dir) -> tuple[object, dict]:
    """Load the fast tokenizer in `tokenizer_dir`; return it and its fingerprint for pregenerate.json."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise TensorslimError(
            f"cannot load a tokenizer from {tokenizer_dir}: {exc}",
            "pass --tokenizer a directory saved by save_pretrained (with tokenizer.json or vocab.txt)",
        ) from None
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TensorslimError(
            f"tokenizer in {tokenizer_dir} is not a fast (Rust) tokenizer",
            "save the model's fast tokenizer with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)",
        )
    missing = [
        name for name in ("cls_token", "sep_token", "mask_token") if getattr(tokenizer, name + "_id", None) is None
    ]
    if missing:
        raise TensorslimError(
            f"tokenizer in {tokenizer_dir} has no {', '.join(missing)}",
            "use a BERT-style tokenizer with [CLS], [SEP] and [MASK]",
        )
    return tokenizer, tokenizer_fingerprint(tokenizer, tokenizer_dir)


def tokenizer_fingerprint(tokenizer, tokenizer_dir=None) -> dict:
    """Class, vocabulary size and SHA-256 of the vocabulary (tokens in id order) of `tokenizer`."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
    info = {"class": type(tokenizer).__name__, "vocab_size": len(tokens), "vocab_sha256": digest}
    if tokenizer_dir is not None:
        info = {"path": str(Path(tokenizer_dir).resolve()), **info}
    return info
