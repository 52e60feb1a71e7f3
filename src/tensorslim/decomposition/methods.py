"""The three decompositions of an (n, D, D) slice stack, chosen by name (TensorLy-Torch style).

Every method writes slice i as  W_i ~= U_i @ S_i @ V_i  with  U_i: (D, d), S_i: (d, d), V_i: (d, D):

    name     | paper | factors (trainable)                                      | weights
    lowrank  | II    | U (n, D, d), S (n, d, d), V (n, d, D)                    | n (2 D d + d^2)
    shared   | III   | U (D, d), S (n, d, d), V (d, D)                          | 2 D d + n d^2
    tucker   | IV    | U (D, d), P (n, l), C (l, d, d), V (d, D); S = P @ C     | 2 D d + n l + l d^2

`fit` initialises the factors from a weight stack (never zeros); `cores` gives S (n, d, d).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..errors import TensorslimError
from .hooi import tucker_hooi


@dataclass(frozen=True)
class Decomposition(ABC):
    """A decomposition with its ranks: d = `rank` for the D x D sides, l = `layer_rank` (tucker)."""

    rank: int
    layer_rank: int | None = None
    name = "base"
    shared = True  # one U and one V for all slices

    def validate(self, n: int, D: int) -> None:
        if not 1 <= self.rank <= D:
            raise TensorslimError(f"rank {self.rank} is out of range for hidden size {D}",
                                  f"choose a rank between 1 and {D}")

    def shapes(self, n: int, D: int) -> dict[str, tuple[int, ...]]:
        d = self.rank
        return {"U": (D, d), "S": (n, d, d), "V": (d, D)}

    def num_params(self, n: int, D: int) -> int:
        return sum(torch.Size(s).numel() for s in self.shapes(n, D).values())

    @abstractmethod
    def fit(self, W: torch.Tensor, **hooi_kwargs) -> dict[str, torch.Tensor]:
        """Factors initialised from the (n, D, D) stack W, float32, orthonormal U and V.T."""

    @staticmethod
    def cores(factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """S (n, d, d) from the factors."""
        if "C" in factors:
            return torch.einsum("nl,lab->nab", factors["P"], factors["C"])
        return factors["S"]

    @classmethod
    def reconstruct(cls, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense (n, D, D) stack U_i S_i V_i (for checks and export; never in forward)."""
        return factors["U"] @ cls.cores(factors) @ factors["V"]


class LowRank(Decomposition):
    """II: an independent rank-d factorisation per slice, from its truncated SVD."""

    name = "lowrank"
    shared = False

    def shapes(self, n, D):
        d = self.rank
        return {"U": (n, D, d), "S": (n, d, d), "V": (n, d, D)}

    def fit(self, W, **_):
        U, s, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        d = self.rank
        return {"U": U[..., :d].float().contiguous(), "S": torch.diag_embed(s[..., :d]).float(),
                "V": Vh[..., :d, :].float().contiguous()}


class Shared(Decomposition):
    """III: one U and one V for all slices, a free d x d core per slice (Tucker-2)."""

    name = "shared"

    def fit(self, W, **hooi_kwargs):
        n, D, _ = W.shape
        core, (_, U, V), _ = tucker_hooi(W, (n, self.rank, self.rank), **hooi_kwargs)
        return {"U": U, "S": core, "V": V.T.contiguous()}


class Tucker(Decomposition):
    """IV: the paper's matrix bank, S_i = sum_k P[i, k] C_k with l bank matrices."""

    name = "tucker"

    def validate(self, n, D):
        super().validate(n, D)
        if self.layer_rank is None or not 1 <= self.layer_rank <= n:
            raise TensorslimError(f"layer rank {self.layer_rank} is out of range for {n} slices",
                                  f"choose --layer-rank between 1 and {n}")

    def shapes(self, n, D):
        d, l = self.rank, self.layer_rank
        return {"U": (D, d), "P": (n, l), "C": (l, d, d), "V": (d, D)}

    def fit(self, W, **hooi_kwargs):
        core, (P, U, V), _ = tucker_hooi(W, (self.layer_rank, self.rank, self.rank), **hooi_kwargs)
        return {"U": U, "P": P, "C": core, "V": V.T.contiguous()}


METHODS: dict[str, type[Decomposition]] = {cls.name: cls for cls in (LowRank, Shared, Tucker)}


def get_method(name: str, rank: int, layer_rank: int | None = None) -> Decomposition:
    """The decomposition called `name` with its ranks (layer_rank only for tucker)."""
    if name not in METHODS:
        raise TensorslimError(f"unknown decomposition method {name!r}", f"use one of {', '.join(METHODS)}")
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise TensorslimError(f"rank must be an integer, got {rank!r}", "pass --rank as a whole number")
    return METHODS[name](rank, layer_rank if name == "tucker" else None)
