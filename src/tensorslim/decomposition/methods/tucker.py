"""IV: the paper's matrix bank. S_i = sum_k P[i, k] C_k with l bank matrices per group."""

from __future__ import annotations

from itertools import product

import torch

from ...errors import TensorslimError
from ..allocation import Spectra, best_by_bound
from ..slices import Group
from .base import (
    ALLOCATION,
    GROUP_RANKS,
    KEEP,
    LAYER_WINDOW,
    PRIVATE_PARTS,
    RANK,
    SIDES,
    WEIGHTING,
    Method,
    Option,
    option_values,
    unmeetable,
)
from .hooi_options import HOOI_OPTIONS, run_hooi
from .shared import Shared

LAYER_RANK = Option(
    "layer_rank",
    int,
    None,
    "l, the size of a group's matrix bank (at most its slice count); default: half the slices, or from --budget",
)


class Tucker(Method):
    """U (R, r1), P (n, l), C (l, r1, r2), V (r2, C); R r1 + C r2 + n l + l r1 r2 weights (without
    the side that `sides` output-full keeps whole)."""

    name = "tucker"
    paper = "IV"
    options = (
        *(RANK, ALLOCATION, KEEP, GROUP_RANKS, SIDES, LAYER_RANK, LAYER_WINDOW, PRIVATE_PARTS, WEIGHTING),
        *HOOI_OPTIONS,
    )
    factor_names = ("U", "P", "C", "V")
    per_slice = ("P",)

    def validate(self, groups, hidden_size):
        largest = max(g.num_slices for g in groups.values())
        if self.layer_rank is not None and not 1 <= self.layer_rank <= largest:
            raise TensorslimError(
                f"layer rank {self.layer_rank} is out of range for {largest} slices",
                f"choose --layer-rank between 1 and {largest} (a group holds the slices of its --layer-window "
                "layers; --layer-window 0 puts all layers in one group per shape)",
            )
        super().validate(groups, hidden_size)

    def ranks_at(self, group, rank):
        n = group.num_slices
        l = self.layer_rank if self.layer_rank is not None else max(1, n // 2)
        if l < 1:
            raise TensorslimError(f"layer rank {l} is not positive", f"choose --layer-rank between 1 and {n}")
        return {**super().ranks_at(group, rank), "layer_rank": min(l, n)}

    def shapes(self, group: Group, ranks):
        r1, r2 = self.side_ranks(group, ranks)
        l = ranks["layer_rank"]
        shapes = {"U": (group.rows, r1), "P": (group.num_slices, l), "C": (l, r1, r2), "V": (r2, group.cols)}
        return self.stored_shapes(group, shapes)

    def fit(self, W, group, ranks):
        r1, r2 = self.side_ranks(group, ranks)
        core, (P, U, V), record = run_hooi(self, W, (ranks["layer_rank"], r1, r2))
        return {"U": U, "P": P, "C": core, "V": V.T.contiguous()}, record

    def is_exact(self, group, ranks):
        return super().is_exact(group, ranks) and ranks["layer_rank"] >= group.num_slices

    def fit_calibrated(self, W, group, ranks, weights):
        """A full bank (l = n) is the shared method's model with P = I: fitted as shared fits it (each
        slice's core solved exactly, where the bank's C and P updates are approximate); a smaller bank
        by the refinement of the base class."""
        if ranks["layer_rank"] < group.num_slices or self.is_exact(group, ranks):
            return super().fit_calibrated(W, group, ranks, weights)
        shared = Shared(**option_values(Shared, self.values))
        factors, record = shared.fit_calibrated(W, group, ranks, weights)
        P = torch.eye(group.num_slices, dtype=factors["S"].dtype, device=factors["S"].device)
        return {"U": factors["U"], "P": P, "C": factors["S"], "V": factors["V"]}, record

    def cores(self, factors):
        """S_i = sum_j P_ij C_j for the slices `factors` hold (a module computes only its own)."""
        return torch.einsum("nl,lab->nab", factors["P"], factors["C"])

    def for_budget(self, groups, hidden_size, budget, stacks=None):
        """With --layer-rank fixed: the largest rank that fits; with --rank fixed: the largest bank.
        With neither and the group `stacks` known: of the banks of n, 3n/4, n/2 and n/4 slices (and
        each side policy, `SIDES`, unless --sides is given), each with the largest rank that fits
        (and the largest bank once that rank is full), the one with the smallest HOSVD error bound
        (`Method.error_bound`), preferring ranks below full. Without stacks: banks of half the
        slices (the paper's 72-384 student of BERT-base) and the largest rank, and if even the
        full rank fits that way, the full rank and the largest bank."""
        stacks = Spectra.of(stacks)
        if self.layer_rank is not None:
            return super().for_budget(groups, hidden_size, budget, stacks)
        if self.rank is None and stacks is not None:
            largest = max(g.num_slices for g in groups.values())
            candidates = []
            for share, policy in product((1, 0.75, 0.5, 0.25), (self.sides,) if self.sides else SIDES.choices):
                method = self.with_values(layer_rank=max(1, round(share * largest)), sides=policy)
                try:
                    found = method.for_budget(groups, hidden_size, budget, stacks)
                except TensorslimError:
                    continue
                if found.rank == hidden_size:  # full rank: spend the rest on the bank
                    found = found.with_values(layer_rank=None).for_budget(groups, hidden_size, budget)
                candidates.append(found)
            if not candidates:
                unmeetable(self.name, budget, self.with_values(rank=1, layer_rank=1).total_params(groups, hidden_size))
            return best_by_bound(candidates, groups, hidden_size, stacks)
        if self.rank is None:
            found = super().for_budget(groups, hidden_size, budget)
            if found.rank is None or found.rank < hidden_size:  # ratio allocation, or below full
                return found
            return found.for_budget(groups, hidden_size, budget)  # rank now fixed at the hidden size
        largest = max(g.num_slices for g in groups.values())
        fits = [
            l
            for l in range(1, largest + 1)
            if self.with_values(layer_rank=l).total_params(groups, hidden_size) <= budget
        ]
        if not fits:
            unmeetable(self.name, budget, self.with_values(layer_rank=1).total_params(groups, hidden_size))
        return self.with_values(layer_rank=max(fits))
