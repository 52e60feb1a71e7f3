"""Ranks from a parameter budget: the largest rank whose factors fit in `budget` weights."""

from __future__ import annotations

from ..errors import TensorslimError
from .methods import get_method


def ranks_for_budget(method: str, n: int, D: int, budget: int, rank: int | None = None,
                     layer_rank: int | None = None) -> tuple[int, int | None]:
    """(rank, layer_rank) with the most factor weights not above `budget`.

    Fix either rank to search the other. For tucker with neither fixed, the bank keeps half the
    slices (l = n // 2, as the paper's 72-384 student of BERT-base) and d is searched.
    """
    if budget < 1:
        raise TensorslimError(f"parameter budget {budget} is not positive", "pass a budget of at least 1 weight")
    if method == "tucker" and rank is not None and layer_rank is None:
        fits = [l for l in range(1, n + 1) if get_method(method, rank, l).num_params(n, D) <= budget]
        if not fits:
            _unmeetable(method, budget, get_method(method, rank, 1).num_params(n, D))
        return rank, max(fits)
    if method == "tucker" and layer_rank is None:
        layer_rank = max(1, n // 2)
    fits = [d for d in range(1, D + 1) if get_method(method, d, layer_rank).num_params(n, D) <= budget]
    if not fits:
        _unmeetable(method, budget, get_method(method, 1, layer_rank).num_params(n, D))
    return max(fits), layer_rank if method == "tucker" else None


def _unmeetable(method: str, budget: int, smallest: int):
    raise TensorslimError(
        f"no {method} rank setting fits in {budget:,} weights (the smallest needs {smallest:,})",
        "raise the budget, or fix a smaller --layer-rank / --rank",
    )
