"""Weight matrices <-> groups of equal-shape slices: the one statement of how a model's matrices
become the (n, R, C) stacks that a decomposition method factorises.

Input: the logical matrices of every decomposed module in [in, out] orientation (y = x @ M), in
layer order and, within a layer, in the family's projection order (see `families.spec`). Each
logical matrix is *oriented* (transposed to [out, in] when its projection says so) and then cut:

- into D x D tiles when both of its sides are multiples of the hidden size D (the paper's BERT
  stacking: an FFN matrix of size 4D x D becomes 4 slices), tiles taken along rows, then columns;
- otherwise kept whole (a decoder's D x D_kv key/value or its 1536 x 576 FFN matrices), since
  they do not tile into D x D blocks.

Slices of equal shape (R, C) form one group, stacked in that order; each group is decomposed with
its own factors. For BERT every slice is D x D, so there is one group of n = L (4 + 2k) slices in
the paper's order: q, k, v, o, ffn_in.0..k-1, ffn_out.0..k-1 for each layer.

With a layer window w (Basis Sharing's grouping) the slices of each run of w consecutive layers
that read the same input form groups of their own: group "<R>x<C>_<input>_<first>-<last>" holds the
R x C slices of layers first..last whose modules read input `input` (`Matrix.input`: the family's
`reads`, such as q, k and v reading the attention input, or the module's own parts). So every slice
of a windowed group reads its input on the same side (`Group.inputs`). Modules with a part named in
`private` (Basis Sharing's private part, e.g. o and down) are not shared across layers: each layer's
own are a group of their own, as with a window of 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Block:
    """One slice of a module's [in, out] matrix M: M[rows, cols] is the slice (transposed if
    `transposed`), slice `index` of group `group`."""

    group: str
    index: int
    in_start: int
    out_start: int
    in_size: int
    out_size: int
    transposed: bool


@dataclass(frozen=True)
class ModuleLayout:
    """How one module's [in, out] matrix is made of slices."""

    key: str
    in_features: int
    out_features: int
    blocks: tuple[Block, ...]

    @property
    def group(self) -> str:
        return self.blocks[0].group

    @property
    def transposed(self) -> bool:
        return self.blocks[0].transposed


@dataclass(frozen=True)
class Group:
    """n slices of shape (rows, cols); `inputs` is the side every slice reads its input on ("rows"
    for [in, out] slices, "cols" for [out, in] ones), or None when the group mixes both."""

    name: str
    rows: int
    cols: int
    num_slices: int
    inputs: str | None = None


@dataclass(frozen=True)
class Matrix:
    """A module to decompose: `key` names it, its input width, the output widths of its logical
    parts (fused modules have several), whether its slices are [out, in], and what it reads
    (modules of a layer with the same `input` read the same tensor)."""

    key: str
    in_features: int
    part_widths: tuple[int, ...]
    transposed: bool
    input: str = ""
    parts: tuple[str, ...] = ()  # the family's names of the logical parts (q, k, v, o, gate, up, down, ...)


def group_name(rows: int, cols: int, input: str = "", layers: tuple[int, int] | None = None) -> str:
    """A group's name: "<R>x<C>" over every layer; with a layer window "<R>x<C>_<input>_<first>-<last>"."""
    if layers is None:
        return f"{rows}x{cols}"
    return f"{rows}x{cols}_{input}_{layers[0]}-{layers[1]}"


def plan(
    matrices: list[Matrix], hidden_size: int, window: int | None = None, private: tuple[str, ...] = ()
) -> tuple[dict[str, Group], list[ModuleLayout]]:
    """Groups and per-module layouts for `matrices` in stacking order (see the module docstring);
    `window`: layers per group (None: every layer in one group per shape); `private`: part names
    whose modules are grouped per layer (a fused module goes with any of its parts)."""
    if window is not None and window < 1:
        raise ValueError(f"layer window {window} is not positive")
    last = max(layer_of(m.key) for m in matrices)
    counts: dict[str, int] = {}
    groups: dict[str, Group] = {}
    layouts = []
    for m in matrices:
        blocks, out_start = [], 0
        w = 1 if set(m.parts) & set(private) else window
        for width in m.part_widths:
            R, C = (width, m.in_features) if m.transposed else (m.in_features, width)
            tile = hidden_size if R % hidden_size == 0 and C % hidden_size == 0 else None
            tr, tc = (tile, tile) if tile else (R, C)
            if w is None:
                name = group_name(tr, tc)
            else:
                first = layer_of(m.key) // w * w
                name = group_name(tr, tc, m.input, (first, min(first + w, last + 1) - 1))
            for a in range(R // tr):
                for b in range(C // tc):
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                    # rows/cols of the oriented part -> in/out ranges of the module's [in, out] matrix
                    (i0, isz), (o0, osz) = (
                        ((b * tc, tc), (a * tr, tr)) if m.transposed else ((a * tr, tr), (b * tc, tc))
                    )
                    blocks.append(Block(name, index, i0, out_start + o0, isz, osz, m.transposed))
            side = "cols" if m.transposed else "rows"
            known = groups.get(name)
            inputs = side if known is None or known.inputs == side else None
            groups[name] = Group(name, tr, tc, counts[name], inputs)
            out_start += width
        layouts.append(ModuleLayout(m.key, m.in_features, out_start, tuple(blocks)))
        if len({(b.group, b.transposed) for b in blocks}) > 1:
            raise ValueError(f"{m.key}: the parts of a fused module fall into different slice groups")
    return groups, layouts


def layer_of(key: str) -> int:
    """The layer index of a module key "<layer>.<path>"."""
    return int(key.partition(".")[0])


def slice_of(matrix: torch.Tensor, block: Block) -> torch.Tensor:
    """The oriented slice of `block` from a module's [in, out] matrix."""
    piece = matrix[block.in_start : block.in_start + block.in_size, block.out_start : block.out_start + block.out_size]
    return piece.T if block.transposed else piece


def stack(
    matrices: dict[str, torch.Tensor], groups: dict[str, Group], layouts: list[ModuleLayout]
) -> dict[str, torch.Tensor]:
    """{group: (n, R, C) float32 stack} from the modules' [in, out] matrices keyed like `layouts`."""
    out = {name: [None] * g.num_slices for name, g in groups.items()}
    for layout in layouts:
        for block in layout.blocks:
            out[block.group][block.index] = slice_of(matrices[layout.key], block)
    return {name: torch.stack(slices).detach().float() for name, slices in out.items()}


def assemble(stacks: dict[str, torch.Tensor], layout: ModuleLayout) -> torch.Tensor:
    """The module's [in, out] matrix rebuilt from (reconstructed) group stacks (inverse of stack)."""
    first = stacks[layout.group]
    matrix = first.new_zeros(layout.in_features, layout.out_features)
    for block in layout.blocks:
        s = stacks[block.group][block.index]
        matrix[block.in_start : block.in_start + block.in_size, block.out_start : block.out_start + block.out_size] = (
            s.T if block.transposed else s
        )
    return matrix
