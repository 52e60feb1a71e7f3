"""What every decomposition method is: a registered class that owns its hyper-parameters, its
ranks per slice group, its factor shapes, its fit, its forward contraction and its counts.

A method writes slice i of a group (n slices of shape R x C) as  W_i ~= U_i @ S_i @ V_i  with
U_i: (R, r1), S_i: (r1, r2), V_i: (r2, C). Methods with `shared = True` use one U and one V for
the whole group (so that x @ U is computed once for all the slices a module's input meets).

Ranks are given relative to the hidden size D: `rank` d is the rank of a D-wide side, and a group
whose smaller side m differs from D gets round(d m / D). A rank at or above a group's smaller side
keeps that group exact (`side_ranks`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import TensorslimError
from ..slices import Group
from ..weighted import SliceWeights, pooled_start, refine


@dataclass(frozen=True)
class Option:
    """A hyper-parameter a method accepts: its name (also the CLI flag, underscores as dashes), type,
    default and help text. Options of the same name mean the same thing in every method."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None


RANK = Option(
    "rank",
    int,
    None,
    "d, the rank of a hidden-size side (other sides scale with their size); default: D/2, or from --budget",
)


class Method(ABC):
    """A decomposition method with its hyper-parameter values (`options` lists the accepted ones)."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    shared: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = (RANK,)
    factor_names: ClassVar[tuple[str, ...]]

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
        d = self.rank if self.rank is not None else max(1, hidden_size // 2)
        if not 1 <= d <= hidden_size:
            raise TensorslimError(
                f"rank {d} is out of range for hidden size {hidden_size}", f"choose a rank between 1 and {hidden_size}"
            )
        smaller = min(group.rows, group.cols)
        return {"rank": max(1, min(smaller, round(d * smaller / hidden_size)))}

    def side_ranks(self, group: Group, ranks: dict[str, int]) -> tuple[int, int]:
        """(r1, r2): the ranks of U's and V's sides. Full on both sides once the rank reaches the
        smaller side, so that the group is exact."""
        d = ranks["rank"]
        return (group.rows, group.cols) if d >= min(group.rows, group.cols) else (d, d)

    # factors ----------------------------------------------------------------------------------
    @abstractmethod
    def shapes(self, group: Group, ranks: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Factor name -> shape for a group."""

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
        factors, record = pooled_start(W, weights, lambda Ww: self.fit(Ww, group, ranks))
        refined, calibrated = refine(
            W, weights, factors, tol=self.values.get("tol", 1e-4), max_iter=self.values.get("max_iter", 100)
        )
        return refined, {**record, **calibrated}

    def cores(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """S (n, r1, r2)."""
        return factors["S"]

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense (n, R, C) stack U_i S_i V_i (for checks and merging; never in forward)."""
        return factors["U"] @ self.cores(factors) @ factors["V"]

    # budgets ----------------------------------------------------------------------------------
    def total_params(self, groups: dict[str, Group], hidden_size: int) -> int:
        return sum(self.num_params(g, self.group_ranks(g, hidden_size)) for g in groups.values())

    def with_values(self, **values) -> Method:
        return type(self)(**{**self.values, **values})

    def for_budget(self, groups: dict[str, Group], hidden_size: int, budget: int, stacks=None) -> Method:
        """This method with the largest rank whose factors fit in `budget` weights (other options
        as given). `stacks` ({group: (n, R, C)}, whitened for a data-aware fit) lets a method with
        several ways to spend the budget pick the one that fits the weights best."""
        fits = [
            d for d in range(1, hidden_size + 1) if self.with_values(rank=d).total_params(groups, hidden_size) <= budget
        ]
        if not fits:
            unmeetable(self.name, budget, self.with_values(rank=1).total_params(groups, hidden_size))
        return self.with_values(rank=max(fits))

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
