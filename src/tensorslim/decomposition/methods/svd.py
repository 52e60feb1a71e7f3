"""SVD-LLM's and ASVD's form: two factors per slice, its singular values split between them."""

from __future__ import annotations

import torch

from ..slices import Group
from ..weighted import whitened_svd
from .lowrank import LowRank


class SVD(LowRank):
    """U (n, R, r) and V (n, r, C) with W_i ~= U_i V_i; n (R + C) r weights (lowrank without its
    r x r middle: the same rank-r optimum, r^2 fewer weights per slice, nothing to train between)."""

    name = "svd"
    paper = "SVD-LLM"
    factor_names = ("U", "V")
    per_slice = ("U", "V")

    def shapes(self, group: Group, ranks):
        r, _ = self.side_ranks(group, ranks)
        n = group.num_slices
        return {"U": (n, group.rows, r), "V": (n, r, group.cols)}

    def fit(self, W, group, ranks):
        factors, record = super().fit(W, group, ranks)
        return _split(factors), record

    def fit_calibrated(self, W, group, ranks, weights):
        """SVD-LLM: the truncated SVD of each slice whitened by its input moment, split."""
        r, _ = self.side_ranks(group, ranks)
        return _split(whitened_svd(W, weights, r)), {}

    def cores(self, factors):
        """No middle: the projections compute x U V."""
        return None

    def reconstruct(self, factors):
        return factors["U"] @ factors["V"]


def _split(factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """U S V with S diagonal -> (U sqrt(S), sqrt(S) V): both factors on the same scale."""
    root = factors["S"].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    return {"U": (factors["U"] * root[:, None, :]).contiguous(), "V": (root[:, :, None] * factors["V"]).contiguous()}
