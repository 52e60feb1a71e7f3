"""Pregenerated pre-training shards (tensorslim.data.pregenerate) as batches for general distillation.

Only input_ids and token_type_ids are used (the paper's general distillation has no MLM loss);
attention_mask is 1 up to each sequence's last non-[PAD] token, so padded and unpadded shards
give the same batches.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch

from ..errors import TensorslimError


def load_inputs(path: str | Path, epoch: int | None = None) -> datasets.Dataset:
    """input_ids and token_type_ids of a pregenerated directory (all epochs, or one)."""
    from ..data.pregenerate import load_pregenerated

    dataset = load_pregenerated(path, epoch=epoch)
    missing = {"input_ids", "token_type_ids"} - set(dataset.column_names)
    if missing:
        raise TensorslimError(
            f"pregenerated data {path} lacks column(s) {sorted(missing)}", "regenerate it with `tensorslim pregenerate`"
        )
    return dataset.select_columns(["input_ids", "token_type_ids"])


def max_seq_len(path: str | Path) -> int:
    """The sequence length the pregenerated data in `path` was made with."""
    from ..data.pregenerate import read_manifest

    return int(read_manifest(path)["config"]["max_seq_len"])


class PretrainingCollator:
    """Pads a list of {input_ids, token_type_ids} to (B, T) tensors plus attention_mask.

    T is the longest sequence of the batch, or `pad_to` when given (equal shapes on every worker).
    """

    def __init__(self, pad_token_id: int = 0, pad_to: int | None = None):
        self.pad_token_id, self.pad_to = pad_token_id, pad_to

    def _length(self, ids) -> int:
        n = len(ids)
        while n and ids[n - 1] == self.pad_token_id:
            n -= 1
        return n

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [self._length(f["input_ids"]) for f in features]
        width = self.pad_to or max(lengths)
        batch = {
            name: torch.full((len(features), width), self.pad_token_id if name == "input_ids" else 0, dtype=torch.long)
            for name in ("input_ids", "token_type_ids", "attention_mask")
        }
        for row, (feature, n) in enumerate(zip(features, lengths)):
            batch["input_ids"][row, :n] = torch.as_tensor(feature["input_ids"][:n])
            batch["token_type_ids"][row, :n] = torch.as_tensor(feature["token_type_ids"][:n])
            batch["attention_mask"][row, :n] = 1
        return batch
