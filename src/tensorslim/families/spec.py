"""A model family as data: where each layer's projections live, their orientation, how fused
projections split into logical matrices, and which read the same input.

Every projection is described by its *logical* matrices in [in, out] orientation (y = x @ M):
an `nn.Linear` stores [out, in] (its weight is transposed to get M), GPT-2's `Conv1D` stores
[in, out] (its weight is M). A fused module (GPT-2 `c_attn`, ModernBERT `Wqkv`) holds several
logical matrices side by side along its output, in the order of `parts`.

`transposed` fixes the paper's orientation of a slice: attention matrices are sliced as [in, out]
and the FFN matrices so that their FFN side comes first (the FFN input matrix as [out, in], the FFN
output matrix as [in, out]), which puts the residual-stream side of both on the same factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Projection:
    """One module of a layer. `path` is relative to the layer (e.g. "attention.self.query")."""

    path: str
    parts: tuple[str, ...]  # logical matrices along the output, e.g. ("q", "k", "v") for a fused module
    kind: str  # "attention" or "ffn": what `ops` selects
    transposed: bool = False  # slice [out, in] instead of [in, out] (the FFN input matrices)
    conv1d: bool = False  # GPT-2's Conv1D: weight stored [in, out]
    reads: str = ""  # projections of a layer with the same non-empty `reads` get the same input


@dataclass(frozen=True)
class Family:
    """An architecture: its model types, where the layers are and their projections."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the layer ModuleList inside the base model
    projections: tuple[Projection, ...]
    causal: bool = False
    notes: str = ""

    def projection(self, path: str) -> Projection:
        return next(p for p in self.projections if p.path == path)


def get_path(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path` ("" is `root` itself)."""
    return root.get_submodule(path) if path else root


def set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `path` by `module`."""
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent), name, module)


def layers_of(base_model: nn.Module, family: Family) -> nn.ModuleList:
    """The layer list of a base model (e.g. `bert.encoder.layer`)."""
    return get_path(base_model, family.layers)
