"""Decomposition methods, registered by name: one class per file (TensorLy-Torch style).

    name     | paper | factors of a group of n slices R x C                   | weights
    lowrank  | II    | U (n, R, r), S (n, r, r), V (n, r, C)                  | n (R + C) r + n r^2
    svd      | -     | U (n, R, r), V (n, r, C) (SVD-LLM's two factors)       | n (R + C) r
    shared   | III   | U (R, r1), S (n, r1, r2), V (r2, C)                    | R r1 + C r2 + n r1 r2
    tucker   | IV    | U (R, r1), P (n, l), C (l, r1, r2), V (r2, C); S = P C | R r1 + C r2 + n l + l r1 r2

Adding a method is one file with a `Method` subclass, listed in `METHODS` below.
"""

from __future__ import annotations

from ...errors import TensorslimError
from .base import Method, Option
from .lowrank import LowRank
from .shared import Shared
from .svd import SVD
from .tucker import Tucker

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LowRank, SVD, Shared, Tucker)}


def get_method(name: str, **values) -> Method:
    """The method called `name` with hyper-parameter `values` (None values take the defaults)."""
    if name not in METHODS:
        raise TensorslimError(f"unknown decomposition method {name!r}", f"use one of {', '.join(METHODS)}")
    cls = METHODS[name]
    accepted = {o.name for o in cls.options}
    return cls(**{k: v for k, v in values.items() if k in accepted and v is not None})


def all_options() -> dict[str, Option]:
    """Every option of every method, by name (one spelling each), for the CLI."""
    options: dict[str, Option] = {}
    for cls in METHODS.values():
        for option in cls.options:
            options.setdefault(option.name, option)
    return options


__all__ = ["METHODS", "Method", "Option", "all_options", "get_method"]
