"""Packing plain text into fixed-length causal-LM sequences."""

from __future__ import annotations

import pytest

from tensorslim.data.packing import packed_dataset, packed_sequences
from tensorslim.errors import TensorslimError
from tiny_models import tiny_tokenizer


def test_documents_are_concatenated_in_order_and_cut_into_full_sequences(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("w3 w4 w5.\nw6 w7.\n\nw8 w9 w10 w11.\n")  # two documents, one sentence a line
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"  # id 2
    ids = [tokenizer.convert_tokens_to_ids(t) for t in "w3 w4 w5. w6 w7.".split()]
    rows = list(packed_sequences([corpus], tokenizer, 4))
    flat = [i for row in rows for i in row]
    assert all(len(row) == 4 for row in rows)
    assert flat[: len(ids)] == ids and flat[len(ids)] == 2  # first document, then its end token
    data = packed_dataset([corpus], tokenizer, 4, max_sequences=1)
    assert len(data) == 1 and data[0]["attention_mask"] == [1, 1, 1, 1]


def test_too_little_text_is_refused(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("w3 w4\n")
    with pytest.raises(TensorslimError, match="fewer than 64 tokens"):
        packed_dataset([corpus], tiny_tokenizer(), 64)
