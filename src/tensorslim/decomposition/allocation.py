"""Ranks chosen on the spectra of the groups' stacks: the candidate with the smallest error bound
(`best_by_bound`), and allocation by error (`allocate_by_error`), each group's rank chosen so that
the budget goes where it removes the most error per weight (ASVD's and SVD-LLM v2's point that
matrices differ, for any method's groups).

Every group g has an error curve e_g(r), the bound on its (whitened, weighted) error at smaller-side
rank r from the spectra of its stack (`Method.error_curve`), and a weight count p_g(r). Starting
from rank 1 everywhere, the greedy step raises the group with the largest
(e_g(r) - e_g(r + 1)) / (p_g(r + 1) - p_g(r)) while the budget allows; a group stops where its
factors would hold as many weights as its dense slices. For error curves convex in r (tails of
sorted spectra) and equal step costs this minimises sum_g e_g(r_g) subject to sum_g p_g(r_g) <=
budget exactly; with unequal step costs it is the usual marginal-analysis approximation.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import torch

from .hooi import unfolding_energies
from .slices import Group

if TYPE_CHECKING:
    from .methods.base import Method


class Spectra:
    """The spectra of each group's (whitened) stack W (n, R, C), computed once on first use:
    `unfoldings` the squared singular values of its three unfoldings (hooi.unfolding_energies),
    `slices` those of each slice (n, min(R, C)), descending."""

    def __init__(self, stacks: dict[str, torch.Tensor]):
        self.stacks = stacks
        self._unfoldings: dict[str, tuple] = {}
        self._slices: dict[str, torch.Tensor] = {}

    @classmethod
    def of(cls, stacks) -> Spectra | None:
        return stacks if stacks is None or isinstance(stacks, Spectra) else cls(stacks)

    def unfoldings(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if name not in self._unfoldings:
            self._unfoldings[name] = unfolding_energies(self.stacks[name])
        return self._unfoldings[name]

    def slices(self, name: str) -> torch.Tensor:
        if name not in self._slices:
            self._slices[name] = torch.linalg.svdvals(self.stacks[name].double()) ** 2
        return self._slices[name]


def tails(energies: torch.Tensor) -> torch.Tensor:
    """t[k] = sum_{j >= k} energies[..., j] for k = 0..m (t[m] = 0), along the last axis."""
    suffix = energies.flip(-1).cumsum(-1).flip(-1)
    return torch.cat([suffix, torch.zeros_like(suffix[..., :1])], -1)


def allocate_by_error(method: Method, groups: dict[str, Group], budget: int, spectra: Spectra) -> dict[str, int] | None:
    """{group: smaller-side rank} by the greedy rule of the module docstring for `method` (its other
    options fixed), or None when rank 1 everywhere does not fit in `budget`."""
    costs, curves, state = {}, {}, {}
    for name, g in groups.items():
        dense = g.num_slices * g.rows * g.cols
        cost = [method.num_params(g, method.ranks_at(g, r)) for r in range(1, min(g.rows, g.cols) + 1)]
        top = max([r for r, c in enumerate(cost, start=1) if c <= dense] or [1])
        costs[name], curves[name], state[name] = cost[:top], method.error_curve(g, spectra, name)[:top], 1
    spent = sum(cost[0] for cost in costs.values())
    if spent > budget:
        return None
    heap = []

    def push(name):
        r = state[name]
        if r < len(costs[name]):
            added = costs[name][r] - costs[name][r - 1]
            gain = float(curves[name][r - 1] - curves[name][r])
            heapq.heappush(heap, (-gain / added if added > 0 else -float("inf"), name))

    for name in groups:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        r = state[name]
        added = costs[name][r] - costs[name][r - 1]
        if spent + added > budget:
            continue  # this group's next step does not fit; smaller steps of others may
        spent += added
        state[name] = r + 1
        push(name)
    return state


def best_by_bound(candidates: list[Method], groups: dict[str, Group], hidden_size: int, stacks) -> Method:
    """The candidate method with the smallest `error_bound` on `stacks` (full-rank candidates, which
    compress only a bank and do more work per token than the dense layers, only if nothing else)."""
    below = [c for c in candidates if c.rank is None or c.rank < hidden_size]
    spectra = Spectra.of(stacks)
    energies = {n: spectra.unfoldings(n) for n in spectra.stacks}
    return min(below or candidates, key=lambda m: m.error_bound(groups, hidden_size, energies))
