"""Plain text packed into fixed-length token sequences: the training data of causal-LM healing.

Documents from `data.corpus` (files or directories of plain text, any of its layouts) are tokenized
without special tokens, each followed by the tokenizer's end-of-sequence token when it has one,
concatenated in corpus order and cut into sequences of exactly `seq_length` tokens (the tail that
does not fill one is dropped), as causal-LM pre-training packs text. Every position is real, so the
attention mask is all ones.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import TensorslimError
from .corpus import read_documents


def packed_sequences(
    paths, tokenizer, seq_length: int, max_sequences: int | None = None, layout: str = "auto"
) -> Iterator[list[int]]:
    """Yield lists of `seq_length` token ids (see the module docstring)."""
    if seq_length < 2:
        raise TensorslimError(f"sequence length {seq_length} is too short", "pack sequences of at least 2 tokens")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    buffer: list[int] = []
    count = 0
    for sentences in read_documents(paths, layout=layout):
        buffer.extend(tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"] + eos)
        while len(buffer) >= seq_length:
            yield buffer[:seq_length]
            buffer = buffer[seq_length:]
            count += 1
            if max_sequences is not None and count >= max_sequences:
                return


def packed_dataset(paths, tokenizer, seq_length: int, max_sequences: int | None = None, layout: str = "auto"):
    """A `datasets.Dataset` of input_ids / attention_mask rows of `seq_length` tokens."""
    from datasets import Dataset

    rows = list(packed_sequences(paths, tokenizer, seq_length, max_sequences, layout))
    if not rows:
        raise TensorslimError(
            f"the corpus holds fewer than {seq_length} tokens: not one packed sequence",
            "pass more text or a smaller sequence length",
        )
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seq_length for _ in rows]})
