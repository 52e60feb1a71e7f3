"""GLUE splits as tokenized `datasets.Dataset`s and the padding collator used for training.

Columns: input_ids, token_type_ids, attention_mask (lists of int, truncated to max_length, not
padded), labels (int class id, float score for STS-B; absent in test splits). Batches are padded
to the longest sequence by `collator` (or to a fixed length with ``pad_to_max_length``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from transformers import DataCollatorWithPadding

from ..data.glue import get_task, load_examples
from ..errors import TensorslimError

log = logging.getLogger(__name__)


def encode_split(
    glue_dir: str | Path, task, split: str, tokenizer, max_length: int, limit: int | None = None
) -> datasets.Dataset:
    """Tokenize one split of `task`; `limit` keeps its first examples (file order)."""
    task = get_task(task)
    examples = load_examples(glue_dir, task, split)
    if limit is not None:
        if limit <= 0:
            raise TensorslimError(f"example limit must be positive, got {limit}", "pass a positive number")
        examples = examples[:limit]
    pairs = [e.text_b for e in examples]
    encoded = tokenizer(
        [e.text_a for e in examples],
        pairs if task.text_fields(split)[1] is not None else None,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
    )
    columns = {name: encoded[name] for name in ("input_ids", "token_type_ids", "attention_mask")}
    if examples[0].label is not None:
        columns["labels"] = [float(e.label) if task.is_regression else int(e.label) for e in examples]
    log.info("%s %s: %d examples (max length %d)", task.name, split, len(examples), max_length)
    return datasets.Dataset.from_dict(columns)


def collator(tokenizer, pad_to_max_length: int | None = None) -> DataCollatorWithPadding:
    """Pads input_ids/token_type_ids/attention_mask per batch (or to a fixed length)."""
    if pad_to_max_length:
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=pad_to_max_length)
    return DataCollatorWithPadding(tokenizer)


def metrics_fn(task):
    """A Trainer `compute_metrics` reporting the task's GLUE metrics (and "score")."""
    from ..data.glue import compute_metrics

    task = get_task(task)

    def compute(prediction):
        return compute_metrics(task, prediction.predictions, prediction.label_ids)

    return compute
