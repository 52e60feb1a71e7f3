"""II: an independent rank-r factorisation of every slice, from its truncated SVD."""

from __future__ import annotations

import torch

from ..allocation import tails
from ..slices import Group
from ..weighted import whitened_svd
from .base import Method


class LowRank(Method):
    """U (n, R, r), S (n, r, r) diagonal at the start, V (n, r, C); n (R + C) r + n r^2 weights."""

    name = "lowrank"
    paper = "II"
    shared = False
    factor_names = ("U", "S", "V")
    per_slice = ("U", "S", "V")

    def side_ranks(self, group, ranks):
        r = min(ranks["rank"], group.rows, group.cols)  # the SVD is exact at the smaller side
        return r, r

    def shapes(self, group: Group, ranks):
        r, _ = self.side_ranks(group, ranks)
        n = group.num_slices
        return {"U": (n, group.rows, r), "S": (n, r, r), "V": (n, r, group.cols)}

    def fit(self, W, group, ranks):
        r, _ = self.side_ranks(group, ranks)
        U, s, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        factors = {
            "U": U[..., :r].float().contiguous(),
            "S": torch.diag_embed(s[..., :r]).float(),
            "V": Vh[..., :r, :].float().contiguous(),
        }
        return factors, {}

    def error_curve(self, group, spectra, name):
        """e[r - 1]: the error of every slice's own rank-r truncated SVD of the stack `spectra` holds,
        summed (data-aware, each slice is whitened by its own moment, as the fit whitens it: exact)."""
        return tails(spectra.slices(name)).sum(0)[1:]

    def fit_calibrated(self, W, group, ranks, weights):
        """SVD-LLM's closed form: the truncated SVD of each slice whitened by its input moment."""
        r, _ = self.side_ranks(group, ranks)
        return whitened_svd(W, weights, r), {}
