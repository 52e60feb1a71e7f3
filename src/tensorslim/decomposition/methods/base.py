"""What every decomposition method is: a registered class that owns its hyper-parameters, its
ranks per slice group, its factor shapes, its fit, its forward contraction and its counts.

A method writes slice i of a group (n slices of shape R x C) as  W_i ~= U_i @ S_i @ V_i  with
U_i: (R, r1), S_i: (r1, r2), V_i: (r2, C). Methods with `shared = True` use one U and one V for
the whole group (so that x @ U is computed once for all the slices a module's input meets).

Ranks are given relative to the hidden size D: `rank` d is the rank of a D-wide side, and a group
whose smaller side m differs from D gets round(d m / D) (the paper's rule, `allocation` "rank").
With `allocation` "ratio" a budget is spread so that every group keeps the same share of its
weights (`keep`), as the LLM compression papers state a compression (SVD-LLM, Basis Sharing): each
group takes the largest rank whose factors fit that share. A rank at or above a group's smaller side
keeps that group exact (`side_ranks`). With `allocation` "error" each group takes its own rank, chosen
on the spectra of the groups' stacks so that the budget goes where it removes the most error per weight
(`decomposition.allocation`; recorded in `group_ranks`). Methods with shared sides record the rank of each side
(`sides`): a rectangular group's sides scale with their size, or one of them stays full (`SIDES`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import TensorslimError
from ..allocation import Spectra, allocate_by_error, best_by_bound, tails
from ..slice_weights import SliceWeights, fisher_weights, relative_weights
from ..slices import Group
from ..weighted import pooled_start, refine


@dataclass(frozen=True)
class Option:
    """A hyper-parameter a method accepts: its name (also the CLI flag, underscores as dashes), type,
    default and help text. Options of the same name mean the same thing in every method."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    cli: bool = True  # False: set by the library (e.g. from a budget), not a flag of its own


RANK = Option(
    "rank",
    int,
    None,
    "d, the rank of a hidden-size side (other sides scale with their size); default: D/2, or from --budget",
)


ALLOCATION = Option(
    "allocation",
    str,
    None,
    "how a budget is spread over the slice groups: rank (one rank d for the hidden size, other sides "
    "scaled: the paper's rule) or ratio (every group keeps the same share of its weights, as SVD-LLM and "
    "Basis Sharing state a compression), or error (each group its own rank, chosen on the spectra of the "
    "stacks, whitened and weighted as the fit is, so that the budget goes where it removes the most error per "
    "weight); default: ratio for causal LMs, rank otherwise",
    ("rank", "ratio", "error"),
)

GROUP_RANKS = Option(
    "group_ranks",
    dict,
    None,
    "the smaller-side rank of every group (allocation error), set from --budget / --compression",
    cli=False,
)

WEIGHTING = Option(
    "weighting",
    str,
    None,
    "what a data-aware fit of a shared basis minimises: the sum of the projections' relative output "
    "errors (each divided by the projection's output energy, so every projection counts alike), of "
    "their absolute output errors (projections with large inputs dominate), or of their absolute output "
    "errors times their outputs' mean Fisher information (fisher: how much the model's loss moves per unit "
    "of error there; one more calibration pass, with gradients, on a model with its head); default: "
    "relative for causal LMs, absolute otherwise",
    ("relative", "absolute", "fisher"),
)

KEEP = Option(
    "keep",
    float,
    None,
    "the share of every group's weights its factors keep (allocation ratio), set from --budget / --compression",
    cli=False,
)

SIDES = Option(
    "sides",
    str,
    None,
    "how a group's two sides take the rank: proportional (each side's rank scales with its size), "
    "longer-full or shorter-full (that side of a rectangular group kept whole, the other reduced), or "
    "output-full (Basis Sharing: one shared basis of the inputs, each slice's output side whole and its "
    "own; needs groups that read their input on one side, e.g. with --layer-window); default: "
    "proportional, or from --budget",
    ("proportional", "longer-full", "shorter-full", "output-full"),
)

LAYER_WINDOW = Option(
    "layer_window",
    int,
    None,
    "share factors among this many consecutive layers only (Basis Sharing's grouping: each window's "
    "slices of one shape that read one input form a group); 0: all layers share one group per shape (the "
    "paper); default for causal LMs (with --sides output-full unless given): 2, or 1 when a budget removes "
    "40%% or more of the weights; 0 otherwise",
)

PRIVATE_PARTS = Option(
    "private_parts",
    str,
    None,
    "comma-separated parts (the family's names: q, k, v, o, gate, up, down, ...) grouped per layer "
    "instead of sharing their layer window's basis (Basis Sharing's private part is o,down; fewer "
    "multiply-adds per token, docs/decomposition.md section 1); default: none, every part shared",
)


class Method(ABC):
    """A decomposition method with its hyper-parameter values (`options` lists the accepted ones)."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    shared: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = (RANK, ALLOCATION, KEEP, GROUP_RANKS)
    factor_names: ClassVar[tuple[str, ...]]
    per_slice: ClassVar[tuple[str, ...]]  # the factors whose first axis is the slice (a module reads its own)

    def __init__(self, **values):
        known = {o.name: o for o in self.options}
        unknown = set(values) - set(known)
        if unknown:
            raise TensorslimError(
                f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}",
                f"{self.name} accepts {', '.join(known)}",
            )
        self.values = {name: values.get(name, o.default) for name, o in known.items()}
        for name, value in self.values.items():
            if value is not None and known[name].choices and value not in known[name].choices:
                raise TensorslimError(
                    f"{name} must be one of {', '.join(known[name].choices)}, got {value!r}",
                    f"pass --{name.replace('_', '-')} as one of those",
                )
        for name, value in self.values.items():
            if (
                value is not None
                and known[name].type is int
                and (not isinstance(value, int) or isinstance(value, bool))
            ):
                raise TensorslimError(
                    f"{name} must be a whole number, got {value!r}", f"pass --{name.replace('_', '-')} as an integer"
                )

    def __getattr__(self, name: str):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"

    # ranks ------------------------------------------------------------------------------------
    def validate(self, groups: dict[str, Group], hidden_size: int) -> None:
        """Refuse option values that fit no group (before any work)."""
        for group in groups.values():
            self.group_ranks(group, hidden_size)

    def group_ranks(self, group: Group, hidden_size: int) -> dict[str, int]:
        """This method's ranks for `group` (recorded per group in the student's config)."""
        smaller = min(group.rows, group.cols)
        chosen = self.values.get("group_ranks") or {}
        if group.name in chosen and self.rank is None:
            if not 1 <= chosen[group.name] <= smaller:
                raise TensorslimError(
                    f"group {group.name} cannot take rank {chosen[group.name]} (its smaller side is {smaller})",
                    "leave group_ranks to --allocation error, or give ranks between 1 and each group's smaller side",
                )
            return self.ranks_at(group, chosen[group.name])
        if self.values.get("keep") is not None and self.rank is None:
            return self._ranks_for_share(group, self.keep)
        d = self.rank if self.rank is not None else max(1, hidden_size // 2)
        if not 1 <= d <= hidden_size:
            raise TensorslimError(
                f"rank {d} is out of range for hidden size {hidden_size}", f"choose a rank between 1 and {hidden_size}"
            )
        return self.ranks_at(group, max(1, min(smaller, round(d * smaller / hidden_size))))

    def ranks_at(self, group: Group, rank: int) -> dict[str, int]:
        """The ranks of `group` when its smaller side takes rank `rank`."""
        ranks = {"rank": rank}
        if self.shared:
            ranks["sides"] = list(self._sides(group, rank))
        return ranks

    def _ranks_for_share(self, group: Group, keep: float) -> dict[str, int]:
        """The largest ranks whose factors hold at most `keep` of the group's weights (rank 1 if none
        does; the budget check refuses that)."""
        limit = keep * group.num_slices * group.rows * group.cols
        lo, hi = 1, min(group.rows, group.cols)
        while lo < hi:  # weights grow with the rank: the largest rank that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.num_params(group, self.ranks_at(group, mid)) <= limit else (lo, mid - 1)
        return self.ranks_at(group, lo)

    def _sides(self, group: Group, rank: int) -> tuple[int, int]:
        """(r1, r2) for the smaller side's rank `rank` under the `sides` option."""
        output_side = self.whole_side(group)  # checks that output-full fits the group
        if rank >= min(group.rows, group.cols):
            return group.rows, group.cols  # exact
        smaller = min(group.rows, group.cols)
        scaled = [min(side, max(1, round(rank * side / smaller))) for side in (group.rows, group.cols)]
        if output_side is not None:
            return (scaled[0], group.cols) if output_side == "V" else (group.rows, scaled[1])
        policy = self.values.get("sides") or "proportional"
        if group.rows == group.cols or policy == "proportional":
            return tuple(scaled)
        keep = (group.rows > group.cols) == (policy == "longer-full")  # keep the rows side whole
        return (group.rows, scaled[1]) if keep else (scaled[0], group.cols)

    def side_ranks(self, group: Group, ranks: dict[str, int]) -> tuple[int, int]:
        """(r1, r2): the ranks of U's and V's sides (recorded as `sides`; students saved before
        it existed have `rank` on both sides). Full on both sides once the rank reaches the smaller
        side, so that the group is exact."""
        if "sides" in ranks:
            return tuple(ranks["sides"])
        d = ranks["rank"]
        return (group.rows, group.cols) if d >= min(group.rows, group.cols) else (d, d)

    def whole_side(self, group: Group) -> str | None:
        """The factor that `sides` output-full leaves out, the output side of every slice (V for
        [in, out] slices, U for [out, in] ones: that side is whole and folded into each slice's core),
        or None under the other policies."""
        if self.values.get("sides") != "output-full":
            return None
        if group.inputs is None:
            raise TensorslimError(
                f"--sides output-full needs slices that all read their input on one side; group "
                f"{group.name} mixes [in, out] and [out, in] slices",
                "pass --layer-window (windowed groups are split by input side), or another --sides",
            )
        return "V" if group.inputs == "rows" else "U"

    # factors ----------------------------------------------------------------------------------
    @abstractmethod
    def shapes(self, group: Group, ranks: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Factor name -> shape for a group."""

    def stored_shapes(self, group: Group, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """`shapes` without the factor of a side kept whole (`whole_side`)."""
        whole = self.whole_side(group)
        return {name: shape for name, shape in shapes.items() if name != whole}

    def finish(self, group: Group, factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The factors as stored: a fit's orthogonal factor of a whole side (`whole_side`) folded into
        the cores (S, or tucker's bank C), which then map straight to that side."""
        whole = self.whole_side(group)
        if whole is None:
            return factors
        core = "C" if "C" in factors else "S"
        folded = factors[core] @ factors["V"] if whole == "V" else factors["U"] @ factors[core]
        return {name: f for name, f in factors.items() if name != whole} | {core: folded.contiguous()}

    def num_params(self, group: Group, ranks: dict[str, int]) -> int:
        return sum(torch.Size(s).numel() for s in self.shapes(group, ranks).values())

    @abstractmethod
    def fit(self, W: torch.Tensor, group: Group, ranks: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
        """Factors (float32) initialised from the (n, R, C) stack W, and a record of the solve."""

    def is_exact(self, group: Group, ranks: dict[str, int]) -> bool:
        """Whether these ranks reproduce every slice of `group` (both sides at full rank)."""
        return self.side_ranks(group, ranks) == (group.rows, group.cols)

    def fit_calibrated(
        self, W: torch.Tensor, group: Group, ranks: dict[str, int], weights: SliceWeights
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Factors that minimise the calibrated output error sum_i f_i (decomposition.weighted) for
        the damped input moments `weights`: the weight-only fit of the stack whitened by each side's
        mean moment, refined by block coordinate descent (methods with shared U and V; per-slice
        methods override this with their closed form)."""
        if self.is_exact(group, ranks):
            return self.fit(W, group, ranks)  # nothing to refine
        weights = self.weighted(W, weights)
        factors, record = pooled_start(W, weights, lambda Ww: self.fit(Ww, group, ranks))
        refined, calibrated = refine(
            W, weights, factors, tol=self.values.get("tol", 1e-4), max_iter=self.values.get("max_iter", 100)
        )
        return refined, {**record, **calibrated}

    def weighted(self, W: torch.Tensor, weights: SliceWeights) -> SliceWeights:
        """`weights` as this method's `weighting` counts the slices of the (n, R, C) stack W."""
        if self.values.get("weighting") == "relative":
            return relative_weights(W, weights)
        if self.values.get("weighting") == "fisher":
            return fisher_weights(weights)
        return weights

    def cores(self, factors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """S (n, r1, r2) of the slices `factors` hold (the per-slice factors may be cut to a module's
        slices), or None for a method without a middle factor (U_i V_i)."""
        return factors["S"]

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense (n, R, C) stack U_i S_i V_i (for checks and merging; never in forward); a factor
        left out (`whole_side`) is the identity."""
        W = self.cores(factors)
        W = W if "U" not in factors else factors["U"] @ W
        return W if "V" not in factors else W @ factors["V"]

    # budgets ----------------------------------------------------------------------------------
    def total_params(self, groups: dict[str, Group], hidden_size: int) -> int:
        return sum(self.num_params(g, self.group_ranks(g, hidden_size)) for g in groups.values())

    def with_values(self, **values) -> Method:
        return type(self)(**{**self.values, **values})

    def for_budget(self, groups: dict[str, Group], hidden_size: int, budget: int, stacks=None) -> Method:
        """This method with the largest rank whose factors fit in `budget` weights (other options
        as given). `stacks` ({group: (n, R, C)}, whitened for a data-aware fit) lets a method with
        several ways to spend the budget pick the one that fits the weights best: with shared sides
        and `sides` unset, the side policy with the smallest HOSVD error bound. With `allocation`
        ratio (and no rank given) the rank rule gives way to one share for every group (`keep`); with
        `allocation` error (and `stacks`), to each group's rank by `allocation.allocate_by_error`."""
        stacks = Spectra.of(stacks)
        if stacks is not None and "sides" in self.values and self.sides is None:
            candidates = []
            for policy in SIDES.choices:
                try:
                    candidates.append(self.with_values(sides=policy).for_budget(groups, hidden_size, budget, stacks))
                except TensorslimError:
                    continue
            if not candidates:
                unmeetable(self.name, budget, self.with_values(rank=1).total_params(groups, hidden_size))
            return best_by_bound(candidates, groups, hidden_size, stacks)
        if self.values.get("allocation") == "error" and self.rank is None and stacks is not None:
            chosen = allocate_by_error(self, groups, budget, stacks)
            if chosen is None:
                unmeetable(self.name, budget, self.with_values(rank=1).total_params(groups, hidden_size))
            return self.with_values(group_ranks=chosen)
        if self.values.get("allocation") in ("ratio", "error") and self.rank is None:  # one share each
            # (allocation error without stacks: the check before any weight is read)
            dense = sum(g.num_slices * g.rows * g.cols for g in groups.values())
            found = self.with_values(keep=budget / dense)
            if found.total_params(groups, hidden_size) > budget:
                unmeetable(self.name, budget, self.with_values(rank=1).total_params(groups, hidden_size))
            return found
        fits = [
            d for d in range(1, hidden_size + 1) if self.with_values(rank=d).total_params(groups, hidden_size) <= budget
        ]
        if not fits:
            unmeetable(self.name, budget, self.with_values(rank=1).total_params(groups, hidden_size))
        return self.with_values(rank=max(fits))

    def error_bound(self, groups: dict[str, Group], hidden_size: int, energies: dict) -> float:
        """Upper bound on sum ||W - W_hat||^2 of the truncated HOSVD at this method's ranks, from each
        group's `hooi.unfolding_energies` (the energy beyond each mode's rank, summed over modes)."""
        total = 0.0
        for name, g in groups.items():
            modes = self.mode_ranks(g, self.group_ranks(g, hidden_size))
            total += sum(e[rank:].sum().item() for e, rank in zip(energies[name], modes))
        return total

    def mode_ranks(self, group: Group, ranks: dict[str, int]) -> tuple[int, int, int]:
        """The ranks of the stack's three modes (slices, rows, columns) at `ranks`."""
        return (ranks.get("layer_rank", group.num_slices), *self.side_ranks(group, ranks))

    def error_curve(self, group: Group, spectra: Spectra, name: str) -> torch.Tensor:
        """e[r - 1], r = 1..min(R, C): the truncated HOSVD's error bound (as `error_bound`) of the
        group `name` of `spectra` when its smaller side takes rank r."""
        tails_of = [tails(e) for e in spectra.unfoldings(name)]  # tails_of[mode][k]: energy beyond rank k
        modes = [self.mode_ranks(group, self.ranks_at(group, r)) for r in range(1, min(group.rows, group.cols) + 1)]
        return sum(t[torch.tensor([m[i] for m in modes])] for i, t in enumerate(tails_of))

    def describe(self) -> dict:
        return {"method": self.name, **self.values}


def unmeetable(method: str, budget: int, smallest: int):
    raise TensorslimError(
        f"no {method} rank setting fits in {budget:,} weights (the smallest needs {smallest:,})",
        "raise the budget, or fix a smaller --layer-rank / --rank",
    )


def option_values(method_cls: type[Method], values: dict) -> dict:
    """The entries of `values` that `method_cls` accepts and that are set."""
    names = {o.name for o in method_cls.options}
    return {k: v for k, v in values.items() if k in names and v is not None}
