"""BERT encoder weights <-> the (n, D, D) slice tensor of the paper. The one place that fixes
which matrices are slices, in which order, and in which orientation.

A layer with hidden size D and FFN size I = k D holds 4 + 2k matrices of size D x D ("slots"):

    slot          source weight (nn.Linear, [out, in])     slice M (D x D)               orientation
    q, k, v, o    attention query/key/value/output [D, D]  W.T                           [in, out]
    ffn_in.j      intermediate.dense [kD, D], rows j       W[jD:(j+1)D, :]               [out, in]
    ffn_out.j     output.dense [D, kD], columns j          W[:, jD:(j+1)D].T             [in, out]

so that for an input row vector x: y = x @ M for [in, out] slices and y = x @ M.T for [out, in]
slices. This is the release's orientation: it puts the FFN's residual-stream side on the same
(second) factor for both FFN matrices. Slice i of the stack is layer i // s, slot ops_slots[i % s].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TensorslimError

OPS = ("all", "san", "ffn")
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "decomposed_bert")


@dataclass(frozen=True)
class Slot:
    name: str        # "q", "ffn_in.2", ...
    group: str       # "qkv", "o", "ffn_in", "ffn_out": slots that read the same input
    block: int       # position inside the group
    transposed: bool  # True when the slice is stored [out, in]


def layer_slots(ffn_mult: int) -> list[Slot]:
    """The 4 + 2 ffn_mult slots of one layer, in stacking order."""
    slots = [Slot(name, "qkv", j, False) for j, name in enumerate("qkv")] + [Slot("o", "o", 0, False)]
    slots += [Slot(f"ffn_in.{j}", "ffn_in", j, True) for j in range(ffn_mult)]
    slots += [Slot(f"ffn_out.{j}", "ffn_out", j, False) for j in range(ffn_mult)]
    return slots


def ops_slots(ops: str, ffn_mult: int) -> list[Slot]:
    """The slots that `ops` decomposes: all (4 + 2k), san (attention, 4) or ffn (2k)."""
    if ops not in OPS:
        raise TensorslimError(f"unknown ops {ops!r}", f"use one of {', '.join(OPS)}")
    slots = layer_slots(ffn_mult)
    if ops == "san":
        return slots[:4]
    if ops == "ffn":
        return slots[4:]
    return slots


def ffn_multiple(hidden_size: int, intermediate_size: int) -> int:
    """k = I / D, refusing encoders whose FFN size is not a multiple of the hidden size."""
    if intermediate_size % hidden_size:
        raise TensorslimError(
            f"FFN size {intermediate_size} is not a multiple of hidden size {hidden_size}, so the FFN "
            "matrices cannot be cut into D x D slices",
            "use ops='san' to decompose the attention matrices only",
        )
    return intermediate_size // hidden_size


def check_encoder(config) -> int:
    """Validate a teacher config for stacking; return the FFN multiple k."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TensorslimError(
            f"model type {model_type!r} is not a BERT-family encoder",
            f"tensorslim compresses encoders of type {', '.join(SUPPORTED_MODEL_TYPES[:-1])}; "
            "pass the directory of such a model",
        )
    if getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        raise TensorslimError(
            f"embedding size {config.embedding_size} differs from hidden size {config.hidden_size}",
            "only encoders whose embeddings have the hidden size are supported (ELECTRA-small is not)",
        )
    return ffn_multiple(config.hidden_size, config.intermediate_size)


def dense_weights(layer) -> dict[str, torch.Tensor]:
    """The four nn.Linear weights of a transformers BERT-family layer, keyed by group."""
    att = layer.attention
    qkv = torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight])
    return {"qkv": qkv, "o": att.output.dense.weight, "ffn_in": layer.intermediate.dense.weight,
            "ffn_out": layer.output.dense.weight}


def slice_of(weights: dict[str, torch.Tensor], slot: Slot, D: int) -> torch.Tensor:
    """The D x D slice of `slot`, oriented as the module docstring says."""
    w, j = weights[slot.group], slot.block
    if slot.group == "ffn_out":
        return w[:, j * D:(j + 1) * D].T
    block = w[j * D:(j + 1) * D, :]  # qkv rows, o, ffn_in rows
    return block if slot.transposed else block.T


def stack(layers, ops: str, hidden_size: int, ffn_mult: int) -> torch.Tensor:
    """(n, D, D) float32 tensor of the `ops` slices of transformers BERT layers, n = L * |ops|."""
    slots = ops_slots(ops, ffn_mult)
    out = []
    for layer in layers:
        weights = dense_weights(layer)
        out.extend(slice_of(weights, slot, hidden_size) for slot in slots)
    return torch.stack(out).detach().float()


def unslice(slices: torch.Tensor, slot: Slot) -> torch.Tensor:
    """Inverse of slice_of for one slice: the block as it sits in the nn.Linear weight."""
    return slices if slot.transposed else slices.T


def group_weight(blocks: list[torch.Tensor], group: str) -> torch.Tensor:
    """Assemble an nn.Linear weight [out, in] of `group` from its unsliced blocks."""
    return torch.cat(blocks, dim=1 if group == "ffn_out" else 0)
