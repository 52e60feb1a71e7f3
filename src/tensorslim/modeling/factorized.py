"""The encoder's shared factors and the projections that use them, without ever forming a D x D weight.

Orientation follows `decomposition.stacking`: slice M_i = U_i S_i V_i is [in, out] (y = x M_i), or
[out, in] (y = x M_i^T) for the FFN input. A projection covers a *group* of slices of one layer:

    fan-out (qkv, o, ffn_in): one input x (..., D), outputs concatenated  -> (..., g D)
        y = (x A) @ G,      G = [S_1 B | ... | S_g B]                       (d, g D)
    fan-in (ffn_out):        input split in g blocks x_j (..., D), outputs summed -> (..., D)
        y = [x_1 A | ... | x_g A] @ vstack(S_j) @ B

where A (D, d) is the factor on the input side (U, or V^T for [out, in] slices) and B (d, D) the
factor on the output side. x A is computed once per group (Q, K and V share it). Products that do
not depend on x (S = P C, G) are built once per forward; under torch.no_grad they are cached
across forwards until a parameter changes (tracked by tensor version counters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..decomposition.methods import Decomposition


def affine(h: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h @ W + bias in one fused call, for h of any leading shape."""
    return torch.addmm(bias, h.flatten(0, -2), W).view(*h.shape[:-1], W.shape[-1])


class Factors(nn.Module):
    """All trainable factors of the encoder, stored once (U, V and S, or P and C for tucker).

    Shapes are those of `method.shapes(n, D)`; see decomposition.methods.
    """

    def __init__(self, method: Decomposition, num_slices: int, hidden_size: int):
        super().__init__()
        self.method = method
        for name, shape in method.shapes(num_slices, hidden_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self._memo: dict = {}
        self._memo_key = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters())

    @torch.no_grad()
    def load(self, factors: dict[str, torch.Tensor]) -> None:
        """Copy factors from a `method.fit` result."""
        for name, param in self.named_parameters():
            param.copy_(factors[name])

    def begin_forward(self) -> None:
        """Start a forward pass: keep the products cache only if no gradient is needed and no
        parameter has changed since it was filled."""
        if torch.is_grad_enabled():
            self._memo, self._memo_key = {}, None
            return
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())
        if key != self._memo_key:
            self._memo, self._memo_key = {}, key

    def memo(self, key, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def cores(self) -> torch.Tensor:
        """S (n, d, d), built once per forward (the release built it twice)."""
        return self.memo("S", lambda: self.method.cores(self.as_dict()))

    def sides(self, slices: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B): the input-side (D, d) and output-side (d, D) factors; batched (g, ., .) for lowrank."""
        U, V = self.U, self.V
        if not self.method.shared:
            U, V = U[slices], V[slices]
        return (V.mT, U.mT) if transposed else (U, V)


class FactoredLinear(nn.Module):
    """A group of g slices of one layer as one projection with a dense bias (see module docstring)."""

    def __init__(self, slices: list[int], transposed: bool, fan_in: bool, hidden_size: int):
        super().__init__()
        self.slice_list = list(slices)
        self.register_buffer("slices", torch.tensor(slices), persistent=False)
        self.transposed, self.fan_in, self.g, self.D = transposed, fan_in, len(slices), hidden_size
        self.bias = nn.Parameter(torch.zeros(hidden_size if fan_in else self.g * hidden_size))

    def extra_repr(self) -> str:
        return f"slices={self.slices.tolist()}, transposed={self.transposed}, fan_in={self.fan_in}"

    def _mids(self, factors: Factors) -> torch.Tensor:
        S = factors.cores()[self.slices]
        return S.mT if self.transposed else S  # (g, d, d)

    def forward(self, x: torch.Tensor, factors: Factors) -> torch.Tensor:
        A, B = factors.sides(self.slices, self.transposed)
        key = id(self)
        if factors.method.shared:
            d = A.shape[-1]
            if not self.fan_in:
                G = factors.memo(key, lambda: (self._mids(factors) @ B).transpose(0, 1).reshape(d, -1))
                return affine(x @ A, G, self.bias)
            h = (x.unflatten(-1, (self.g, self.D)) @ A).flatten(-2)  # (..., g d)
            if self.g * self.D <= self.g * d + self.D:  # merging vstack(S) @ B is cheaper per token
                return affine(h, factors.memo(key, lambda: self._mids(factors).reshape(-1, d) @ B), self.bias)
            S = factors.memo(key, lambda: self._mids(factors).reshape(-1, d))
            return affine(h @ S, B, self.bias)
        G = factors.memo(key, lambda: self._mids(factors) @ B)  # (g, d, D)
        if not self.fan_in:
            h = torch.einsum("...i,gid->...gd", x, A)
            return torch.einsum("...gd,gdo->...go", h, G).flatten(-2) + self.bias
        h = torch.einsum("...gi,gid->...gd", x.unflatten(-1, (self.g, self.D)), A)
        return torch.einsum("...gd,gdo->...o", h, G) + self.bias

    def macs_per_token(self, rank: int, shared: bool) -> int:
        """Multiply-adds per token of this projection as forward() computes it (bias excluded)."""
        g, D, d = self.g, self.D, rank
        if not self.fan_in:
            return (D * d if shared else g * D * d) + g * d * D
        merged = shared and g * D <= g * d + D
        return g * D * d + (g * d * D if merged or not shared else g * d * d + d * D)


class DenseLinear(nn.Linear):
    """A projection left dense (outside `ops`); takes and ignores `factors` like FactoredLinear."""

    def forward(self, x: torch.Tensor, factors: Factors | None = None) -> torch.Tensor:
        return super().forward(x)

    def macs_per_token(self, rank: int, shared: bool) -> int:
        return self.in_features * self.out_features
