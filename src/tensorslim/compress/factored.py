"""Factors stored once (`FactorBank`, on the base model) and the projections that read them
(`FactoredProjection`, in place of a model's `nn.Linear` / `Conv1D`), without ever forming a
dense weight in the forward pass.

A module's [in, out] matrix is made of slices (see `decomposition.slices`); slice i of a group is
U_i S_i V_i. A block stored [in, out] is U S V: its input side is A = U, the middle S, the output
side B = V. A block stored [out, in] (transposed) is V^T S^T U^T: A = V^T, middle S^T, B = U^T.
A method that keeps every slice's output side whole (`sides` output-full) stores no B: the middles
map straight to the outputs.

With a shared basis (one A for the whole group) a module computes, for input x (..., in):

    one input block, g output blocks (fan-out: q, k, v, an FFN input matrix):
        y = (x A) @ [M_1 B | ... | M_g B] + b                        M_j the middle of block j
    g input blocks, one output block (fan-in: an FFN output matrix cut into D x D tiles):
        y = [x_1 A | ... | x_g A] @ vstack(M_j) @ B + b              (or vstack(M_j B) when cheaper)

and x A is computed once for consecutive modules that read the same x with the same A (Q, K and V;
gate and up; only the latest product is kept, see `LatestProduct`). Without a shared basis (lowrank)
each block has its own A and B. Products that do not depend on x (a module's cores S_i = P_i C,
M B) are built once per forward; under torch.no_grad they are kept across forwards until a factor
changes (tensor version counters), laid out for a batch-1 product (`laid_out`). A module looks its
products up once per call (`FactorBank.memo`, one dict lookup inside a forward), so that an eager
decode step pays little Python beside its products. With gradients, each per-slice
factor (n, ...) is split once per forward into the modules' slices (`FactorBank.factors`): a module
indexing the stack itself would make the backward pass write a zero-filled gradient of the whole
stack per module, n times the work of one.

While a graph is captured (`torch.compile`, `torch.export`, `torch.onnx.export`, `torch.jit.trace`;
see `tracing`) none of these Python-side caches is read or written: the graph computes every
product itself, and the compiler or runtime folds and deduplicates them (ONNX Runtime folds the
products of factors, which are constant initializers, when it loads the model).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ..decomposition.methods import Method
from ..decomposition.slices import Group, ModuleLayout, assemble


def tracing() -> bool:
    """Whether a graph is being captured (torch.compile / torch.export / ONNX export / jit.trace):
    the forward must then be a pure function of its inputs and parameters."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def laid_out(t: torch.Tensor | None, product: bool = False) -> torch.Tensor | None:
    """`t` ([in, out], or a stack (g, in, out)) for a product kept across forwards. Without gradients
    a matrix is laid out as a batch-1 product (decoding) reads it well on CPU BLAS: a `product` of
    factors (a new tensor anyway) with its longer dimension contiguous, a view of a factor as it is
    when either orientation is contiguous (no copy; `matmul` reads both); anything else row-major.
    With gradients `t` itself, so that training stores no second copy for the backward pass."""
    if t is None or torch.is_grad_enabled():
        return t
    if t.dim() == 2 and (t.shape[0] > t.shape[1] if product else t.mT.is_contiguous()):
        return t.mT.contiguous().mT
    return t.contiguous()


def matmul(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W (+ bias) for W [in, out] and x of any leading shape, reading W as it is laid out (see
    `laid_out`): a transposed row-major [out, in] through F.linear, anything else through matmul."""
    if not W.is_contiguous() and W.mT.is_contiguous():
        return F.linear(x, W.mT, bias)
    y = torch.matmul(x, W)
    return y if bias is None else y + bias


class LatestProduct:
    """f(x) for the latest (key, x) only: modules called one after another on the same input tensor
    (same identity and version counter) with the same `key` get one product. Holding one entry, not
    one per key, lets every earlier layer's input and product be freed as the forward goes on."""

    def __init__(self):
        self.entry: tuple | None = None

    def get(self, key, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        version = -1 if x.is_inference() else x._version  # inference tensors have no version counter
        last = self.entry
        if last is not None and last[0] == key and last[1] is x and last[2] == version:
            return last[3]
        y = f(x)
        self.entry = (key, x, version, y)
        return y

    def clear(self) -> None:
        self.entry = None


class FactorGroup(nn.Module):
    """The factors of one slice group, named and shaped by the method (e.g. U, P, C, V)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters())


class FactorBank(nn.Module):
    """Every decomposed group's factors, stored once; lives at `<base model>.tensorslim_factors`."""

    def __init__(self, method: Method, groups: dict[str, Group], ranks: dict[str, dict[str, int]]):
        super().__init__()
        self.method = method
        self.groups = nn.ModuleDict({name: FactorGroup(method.shapes(g, ranks[name])) for name, g in groups.items()})
        self._memo: dict = {}
        self._memo_key = None
        self._latest = LatestProduct()
        self.warm = False  # inside an eager forward of the base model that may reuse products
        self._bounds: dict[str, set[int]] = {name: {0, g.num_slices} for name, g in groups.items()}

    def register(self, group: str, slices: slice) -> None:
        """Note that a module reads `slices` of `group` (where `factors` splits the per-slice factors)."""
        self._bounds[group] |= {slices.start, slices.stop}

    def __getstate__(self):
        """Copies and pickles carry the factors, not the caches of a forward."""
        return {**self.__dict__, "_memo": {}, "_memo_key": None, "_latest": LatestProduct(), "warm": False}

    # called around every forward of the base model (hooks installed by compress.inplace; the second
    # with always_call, so that a forward that raises leaves no product reuse switched on)
    def begin_forward(self, module: nn.Module, *_) -> None:
        """Keep cached products only without gradients and while no factor has changed; reuse
        products and x A within a forward unless gradient checkpointing will recompute the layers."""
        if tracing():  # nothing cached while a graph is captured (see `tracing`)
            return
        self._latest.clear()
        # layers recomputed in the backward pass must recompute everything they computed the first time
        self.warm = not (
            torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False) for m in module.modules())
        )
        if torch.is_grad_enabled():
            self._memo, self._memo_key = {}, None
            return
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())
        if key != self._memo_key:
            self._memo, self._memo_key = {}, key

    def end_forward(self, *_) -> None:
        if not tracing():
            self.warm = False
            self._latest.clear()

    def reusing(self) -> bool:
        """Whether products may be kept now: inside a warm forward, and no graph being captured (a
        compiled submodule inside an eager forward; the base model's own capture never warms up)."""
        return self.warm and not torch.compiler.is_compiling()

    def memo(self, key, build: Callable[[], object]):
        """build(), kept under `key` while products may be reused (see begin_forward)."""
        if not self.reusing():
            return build()
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = build()
        return found

    def factors(self, group: str, slices: slice | None = None) -> dict[str, torch.Tensor]:
        """The factors of `group`; with `slices`, its per-slice factors (`method.per_slice`, (n, ...))
        cut to those slices (g, ...): in a forward that records gradients, pieces of one split per
        forward (see the module docstring), else views."""
        found = self.groups[group].as_dict()
        if slices is None:
            return found
        if torch.is_grad_enabled() and self.reusing():
            pieces = self.memo(("pieces", group), lambda: self._split(found, self._bounds[group]))
            if (slices.start, slices.stop) in pieces:
                return {**found, **pieces[slices.start, slices.stop]}
        return {**found, **{name: found[name][slices] for name in self.method.per_slice if name in found}}

    def _split(self, found: dict[str, torch.Tensor], bounds: set[int]) -> dict[tuple[int, int], dict]:
        """(start, stop) -> the per-slice factors' pieces between consecutive `bounds`."""
        ranges = list(pairwise(sorted(bounds)))
        sizes = [stop - start for start, stop in ranges]
        names = [name for name in self.method.per_slice if name in found]
        split = {name: found[name].split(sizes) for name in names}
        return {r: {name: split[name][i] for name in names} for i, r in enumerate(ranges)}

    def cores(self, group: str, slices: slice) -> torch.Tensor | None:
        """S (g, r1, r2) of the slices `slices` of `group` (None for a method without middles)."""
        return self.method.cores(self.factors(group, slices))

    def sides(self, group: str, transposed: bool, slices: slice | None = None):
        """(A, B): the input-side and output-side factors; batched (g, ., .), a module's `slices`,
        for a per-slice method. B is None when the method keeps the output side whole (the middles
        then map straight to the outputs)."""
        found = self.factors(group, slices)
        U, V = found.get("U"), found.get("V")
        return (V.transpose(-2, -1), None if U is None else U.transpose(-2, -1)) if transposed else (U, V)

    def shared_input(self, key, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """x @ A, computed once for consecutive modules that read the same x with the same A (`key`
        names A; see `LatestProduct`)."""
        if not self.reusing():
            return matmul(x, A)
        return self._latest.get(key, x, lambda x: matmul(x, A))

    def reconstruct(self, group: str) -> torch.Tensor:
        """The dense (n, R, C) stack of `group` (for merging and checks)."""
        return self.method.reconstruct(self.factors(group))


class FactoredProjection(nn.Module):
    """A module's [in, out] matrix as blocks of one group (see the module docstring), plus its bias."""

    def __init__(self, layout: ModuleLayout, bank: FactorBank, bias: bool):
        super().__init__()
        self.layout, self.in_features, self.out_features = layout, layout.in_features, layout.out_features
        object.__setattr__(self, "bank", bank)  # read at call time, not a submodule: stored once
        self.bias = nn.Parameter(torch.zeros(layout.out_features)) if bias else None
        blocks = layout.blocks
        self.fan_in = len({b.in_start for b in blocks}) > 1
        if self.fan_in and len({b.out_start for b in blocks}) > 1:
            raise ValueError(f"{layout.key}: blocks tile both the input and the output")
        order = sorted(blocks, key=lambda b: (b.in_start, b.out_start))
        if [b.in_start if self.fan_in else b.out_start for b in order] != [
            i * (b.in_size if self.fan_in else b.out_size) for i, b in enumerate(order)
        ]:
            raise ValueError(f"{layout.key}: blocks are not equal consecutive tiles")
        self.g, self.block_in, self.block_out = len(order), order[0].in_size, order[0].out_size
        self.first = order[0].index
        self.input_key = (layout.group, layout.transposed)  # names A for `FactorBank.shared_input`
        if tuple(b.index for b in order) != tuple(range(self.first, self.first + self.g)):
            raise ValueError(f"{layout.key}: its slices are not consecutive in their group")
        bank.register(layout.group, self.slices)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, group={self.layout.group}, "
            f"slices={self.first}..{self.first + self.g - 1}, transposed={self.layout.transposed}"
        )

    @property
    def slices(self) -> slice:
        """This module's slices of its group."""
        return slice(self.first, self.first + self.g)

    def _middles(self) -> torch.Tensor | None:
        """(g, r_in, r_out), or None when the method has no middle factor."""
        S = self.bank.cores(self.layout.group, self.slices)
        if S is None:
            return None
        return S.transpose(-2, -1) if self.layout.transposed else S

    def through_middles(self, B: torch.Tensor | None) -> torch.Tensor:
        """M B per block (B itself for a method without a middle factor, M itself without B)."""
        M = self._middles()
        return B if M is None else M if B is None else M @ B

    def _products(self) -> tuple[str, torch.Tensor, tuple[torch.Tensor, ...]]:
        """(how, A, then), made once per forward or kept (see the module docstring): `how` x meets
        A, the input side ("own", "shared" with the modules of the same input, "tiles" of a fan-in,
        or per-slice stacks "slices out" / "slices in"), then the matrices the result goes through
        in turn, the last adding the bias."""
        bank, group, transposed = self.bank, self.layout.group, self.layout.transposed
        if not bank.method.shared:
            A, B = bank.sides(group, transposed, self.slices)  # (g, in_block, r)
            G = self.through_middles(B)  # (g, r, out_block)
            if self.g == 1:  # one slice: two plain products
                return "own", laid_out(A[0]), (laid_out(G[0], product=True),)
            return "slices in" if self.fan_in else "slices out", laid_out(A), (laid_out(G),)
        A, B = bank.sides(group, transposed)
        r_in, r_out = A.shape[-1], self.block_out if B is None else B.shape[0]
        A = bank.memo((group, transposed, "A"), lambda: laid_out(A))
        if not self.fan_in:
            G = self.through_middles(B).transpose(0, 1).reshape(r_in, -1)
            return "shared", A, (laid_out(G, product=True),)
        if self.g * self.block_out <= self.g * r_out + self.block_out:  # merging vstack(M) @ B is cheaper per token
            return "tiles", A, (laid_out(self.through_middles(B).reshape(-1, self.block_out), product=True),)
        M = laid_out(self._middles().reshape(-1, r_out), product=True)
        return "tiles", A, (M, bank.memo((group, transposed, "B"), lambda: laid_out(B)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank = self.bank
        how, A, then = bank.memo(id(self), self._products)
        if how == "shared":
            h = bank.shared_input(self.input_key, x, A)
        elif how == "own":
            h = matmul(x, A)
        elif how == "tiles":
            h = matmul(x.unflatten(-1, (self.g, self.block_in)), A).flatten(-2)  # (..., g r_in)
        else:  # per-slice stacks: A (g, in_block, r), G (g, r, out_block)
            if how == "slices out":
                h = torch.einsum("...i,gir->...gr", x, A)
                y = torch.einsum("...gr,gro->...go", h, then[0]).flatten(-2)
            else:
                h = torch.einsum("...gi,gir->...gr", x.unflatten(-1, (self.g, self.block_in)), A)
                y = torch.einsum("...gr,gro->...o", h, then[0])
            return y if self.bias is None else y + self.bias
        for W in then[:-1]:
            h = matmul(h, W)
        return matmul(h, then[-1], self.bias)

    def macs_per_token(self) -> int:
        """Multiply-adds per token as forward() computes them (bias excluded; x A counted here
        even where another module of the same input shares it)."""
        A, B = self.bank.sides(self.layout.group, self.layout.transposed)
        g, i, o = self.g, self.block_in, self.block_out
        r_in, r_out = A.shape[-1], o if B is None else B.shape[-2]
        if not self.bank.method.shared:
            return g * (i * r_in + r_in * o)
        if not self.fan_in:
            return i * r_in + r_in * g * o
        merged = g * o <= g * r_out + o
        return g * i * r_in + (g * r_in * o if merged else g * r_in * r_out + r_out * o)

    def shareable_macs(self) -> int:
        """Multiply-adds per token of x A when other modules of the same layer reading the same input
        compute it once with this one (a shared basis, one input block), else 0."""
        if not self.bank.method.shared or self.fan_in:
            return 0
        return self.block_in * self.bank.sides(self.layout.group, self.layout.transposed)[0].shape[-1]

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The module's [in, out] matrix from the current factors."""
        return assemble({self.layout.group: self.bank.reconstruct(self.layout.group)}, self.layout)
