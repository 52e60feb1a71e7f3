"""III: one U and one V for all slices of a group, a free r1 x r2 core per slice (Tucker-2)."""

from __future__ import annotations

from ..slices import Group
from .base import ALLOCATION, GROUP_RANKS, KEEP, LAYER_WINDOW, PRIVATE_PARTS, RANK, SIDES, WEIGHTING, Method
from .hooi_options import HOOI_OPTIONS, run_hooi


class Shared(Method):
    """U (R, r1), S (n, r1, r2), V (r2, C); (R r1 + C r2) + n r1 r2 weights (without the side
    that `sides` output-full keeps whole)."""

    name = "shared"
    paper = "III"
    options = (RANK, ALLOCATION, KEEP, GROUP_RANKS, SIDES, LAYER_WINDOW, PRIVATE_PARTS, WEIGHTING, *HOOI_OPTIONS)
    factor_names = ("U", "S", "V")
    per_slice = ("S",)

    def shapes(self, group: Group, ranks):
        r1, r2 = self.side_ranks(group, ranks)
        return self.stored_shapes(
            group, {"U": (group.rows, r1), "S": (group.num_slices, r1, r2), "V": (r2, group.cols)}
        )

    def fit(self, W, group, ranks):
        r1, r2 = self.side_ranks(group, ranks)
        core, (_, U, V), record = run_hooi(self, W, (group.num_slices, r1, r2))
        return {"U": U, "S": core, "V": V.T.contiguous()}, record
