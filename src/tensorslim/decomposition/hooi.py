"""Tucker decomposition of a 3-way tensor by HOSVD start + HOOI sweeps, in plain torch.

For W of shape (n, D1, D2) and ranks (r0, r1, r2) it returns orthonormal factors A0 (n, r0),
A1 (D1, r1), A2 (D2, r2) and the core G = W x0 A0^T x1 A1^T x2 A2^T of shape (r0, r1, r2), so that
W ~= G x0 A0 x1 A1 x2 A2. A mode whose rank equals its size keeps the identity (no work is spent
on it). Subspaces come from eigenvectors of Gram matrices (float64 eigh of float32 products),
with signs fixed so the result is deterministic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class HooiInfo:
    """What a run did: relative errors after the HOSVD start and after each sweep, and seconds."""

    errors: list[float]
    seconds: float
    sweep_seconds: list[float]

    @property
    def sweeps(self) -> int:
        return len(self.errors) - 1


def leading_eigvecs(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-`rank` eigenvectors (columns) of a symmetric PSD matrix, signs fixed, float32."""
    vals, vecs = torch.linalg.eigh(gram.double())
    vecs = vecs[:, torch.argsort(vals, descending=True)[:rank]]
    pivot = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[pivot, torch.arange(rank)])
    signs[signs == 0] = 1
    return (vecs * signs).float().contiguous()


def _gram_mode1(Z: torch.Tensor, A2) -> torch.Tensor:
    Y = Z if A2 is None else Z @ A2  # (r0, D1, r2)
    Y = Y.transpose(0, 1).reshape(Y.shape[1], -1)
    return Y @ Y.T


def _gram_mode2(Z: torch.Tensor, A1) -> torch.Tensor:
    Y = Z if A1 is None else A1.T @ Z  # (r0, r1, D2)
    Y = Y.reshape(-1, Y.shape[-1])
    return Y.T @ Y


def _project_12(W: torch.Tensor, A1, A2) -> torch.Tensor:
    """W x1 A1^T x2 A2^T, shape (n, r1, r2)."""
    Y = W if A1 is None else A1.T @ W
    return Y if A2 is None else Y @ A2


def tucker_hooi(W: torch.Tensor, ranks: tuple[int, int, int], *, tol: float = 1e-4, max_iter: int = 100):
    """Tucker of W (n, D1, D2) with `ranks`; returns (core, [A0, A1, A2], HooiInfo).

    Stops when the relative error improves by less than `tol` in a sweep, or after `max_iter`
    sweeps. It starts from the leading Gram eigenvectors of each unfolding (HOSVD); with
    `max_iter=0` the result is the (truncated) HOSVD itself.
    """
    start = time.perf_counter()
    W = W.float()
    n, D1, D2 = W.shape
    r0, r1, r2 = ranks
    full = (r0 >= n, r1 >= D1, r2 >= D2)
    norm = torch.linalg.vector_norm(W.double()).item()

    def rel_error(core):
        fit = torch.linalg.vector_norm(core.double()).item()
        return max(norm**2 - fit**2, 0.0) ** 0.5 / norm if norm else 0.0

    # HOSVD start: Gram matrices of the three unfoldings.
    flat1 = W.transpose(0, 1).reshape(D1, -1)
    A1 = None if full[1] else leading_eigvecs(flat1 @ flat1.T, r1)
    del flat1
    flat2 = W.reshape(-1, D2)
    A2 = None if full[2] else leading_eigvecs(flat2.T @ flat2, r2)
    if full[0]:
        A0 = None
    else:
        flat0 = W.reshape(n, -1)
        A0 = leading_eigvecs(flat0 @ flat0.T, r0)
    Y = _project_12(W, A1, A2)
    core = Y if A0 is None else torch.einsum("nl,nab->lab", A0, Y)
    errors, sweep_seconds = [rel_error(core)], []
    log.debug("HOSVD start: relative error %.6f", errors[0])

    needs_sweeps = sum(not f for f in full) >= 2  # with one truncated mode HOSVD is already optimal
    for sweep in range(max_iter if needs_sweeps else 0):
        t0 = time.perf_counter()
        Z = W if A0 is None else torch.einsum("nl,nab->lab", A0, W)  # (r0, D1, D2)
        if not full[1]:
            A1 = leading_eigvecs(_gram_mode1(Z, A2), r1)
        if not full[2]:
            A2 = leading_eigvecs(_gram_mode2(Z, A1), r2)
        Y = _project_12(W, A1, A2)
        if not full[0]:
            flat = Y.reshape(n, -1)
            A0 = leading_eigvecs(flat @ flat.T, r0)
        core = Y if A0 is None else torch.einsum("nl,nab->lab", A0, Y)
        errors.append(rel_error(core))
        sweep_seconds.append(time.perf_counter() - t0)
        log.debug("HOOI sweep %d: relative error %.6f (%.2fs)", sweep + 1, errors[-1], sweep_seconds[-1])
        if errors[-2] - errors[-1] < tol:
            break

    eye = lambda k: torch.eye(k, dtype=W.dtype)  # noqa: E731
    factors = [eye(n) if A0 is None else A0, eye(D1) if A1 is None else A1, eye(D2) if A2 is None else A2]
    return core.contiguous(), factors, HooiInfo(errors, time.perf_counter() - start, sweep_seconds)
