"""Plain text packed into fixed-length token sequences: the training data of causal-LM healing.

Documents from `data.corpus` (files or directories of plain text, any of its layouts) are tokenized
without special tokens, each followed by the tokenizer's end-of-sequence token when it has one,
concatenated in corpus order and cut into sequences of exactly `seq_length` tokens (the tail that
does not fill one is dropped), as causal-LM pre-training packs text. Every position is real, so the
attention mask is all ones. `split_held_out` cuts a held-out head off a text file (the eval text of
a healing run, never trained on).
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


def split_held_out(source, dest, tokenizer, held_out_tokens: int) -> dict:
    """Write dest/heldout.txt (the first lines of text file `source` holding at least `held_out_tokens`
    tokens, cut after a blank line) and dest/train.txt (the rest); return their line counts."""
    from pathlib import Path

    from ..io import atomic_file

    source, dest = Path(source), Path(dest)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    tokens, cut = 0, None
    for i, line in enumerate(lines):
        tokens += len(tokenizer(line, add_special_tokens=False)["input_ids"])
        if tokens >= held_out_tokens and not line.strip():
            cut = i + 1
            break
    if cut is None or cut >= len(lines):
        raise TensorslimError(
            f"{source} is too short to hold out {held_out_tokens} tokens and train on the rest",
            "pass a longer text, or hold out fewer sequences",
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name, part in (("heldout.txt", lines[:cut]), ("train.txt", lines[cut:])):
        with atomic_file(dest / name, encoding="utf-8") as handle:
            handle.write("".join(part))
    return {"heldout_lines": cut, "train_lines": len(lines) - cut}
