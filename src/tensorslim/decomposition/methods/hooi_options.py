"""The HOOI solver options that the shared-basis methods (shared, tucker) accept."""

from __future__ import annotations

from ..hooi import PRECISIONS, tucker_hooi
from .base import Option

HOOI_OPTIONS = (
    Option("tol", float, 1e-4, "HOOI stops when the relative error improves less than this in a sweep (the release's)"),
    Option("max_iter", int, 100, "at most this many HOOI sweeps"),
    Option(
        "precision",
        str,
        "auto",
        "dtype of the HOOI sweeps: bfloat16 sweeps finish with float32 ones; auto uses "
        "bfloat16 for large stacks where the hardware multiplies it natively (AMX CPUs, CUDA), float32 elsewhere",
        PRECISIONS,
    ),
)


def run_hooi(method, W, ranks: tuple[int, int, int]):
    """tucker_hooi with the method's solver options; returns (core, factors, record)."""
    core, factors, info = tucker_hooi(W, ranks, tol=method.tol, max_iter=method.max_iter, precision=method.precision)
    record = {"sweeps": info.sweeps, "errors": info.errors, "seconds": info.seconds, "sweep_dtype": info.sweep_dtype}
    return core, factors, record
