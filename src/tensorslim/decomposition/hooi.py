"""Tucker decomposition of a 3-way tensor by HOSVD start + HOOI sweeps, in plain torch.

For W of shape (n, D1, D2) and ranks (r0, r1, r2) it returns orthonormal factors A0 (n, r0),
A1 (D1, r1), A2 (D2, r2) and the core G = W x0 A0^T x1 A1^T x2 A2^T of shape (r0, r1, r2), so that
W ~= G x0 A0 x1 A1 x2 A2. A mode whose rank equals its size keeps the identity (no work is spent
on it). Each factor is the leading eigenvectors of a Gram matrix (float64 eigh of a float32
product), signs fixed so the result is deterministic.

A sweep updates modes 0, 1, 2 in turn (tensorly's order, so both follow the same path) and works
on two layouts of W, (n, D1, D2) and (D1, n, D2), so that every product is one large matmul with
no copies. Both mode 0 and mode 1 use V = W x2 A2^T, which is computed once per sweep; the fit
||G|| comes from the eigenvalues of the last Gram matrix, so the core is formed once, at the end.
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


def leading_eigvecs(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """Top-`rank` eigenvectors (columns, float32, signs fixed) of a symmetric PSD matrix, and the
    sum of their eigenvalues (the squared norm the projection keeps)."""
    vals, vecs = torch.linalg.eigh(gram.double())
    top = torch.argsort(vals, descending=True)[:rank]
    vecs = vecs[:, top]
    pivot = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[pivot, torch.arange(rank)])
    signs[signs == 0] = 1
    return (vecs * signs).float().contiguous(), vals[top].sum().item()


def _left(A, X: torch.Tensor) -> torch.Tensor:
    """A^T applied to the first axis of X (k, ...) -> (r, ...), as one matmul."""
    return X if A is None else (A.T @ X.reshape(X.shape[0], -1)).reshape(A.shape[1], *X.shape[1:])


def _right(X: torch.Tensor, A) -> torch.Tensor:
    """A applied to the last axis of X (..., k) -> (..., r), as one matmul."""
    return X if A is None else (X.reshape(-1, X.shape[-1]) @ A).reshape(*X.shape[:-1], A.shape[1])


def tucker_hooi(W: torch.Tensor, ranks: tuple[int, int, int], *, tol: float = 1e-4, max_iter: int = 100):
    """Tucker of W (n, D1, D2) with `ranks`; returns (core, [A0, A1, A2], HooiInfo).

    Stops when the relative error improves by less than `tol` in a sweep, or after `max_iter`
    sweeps. It starts from the leading Gram eigenvectors of each unfolding (HOSVD); with
    `max_iter=0` the result is the (truncated) HOSVD itself.
    """
    start = time.perf_counter()
    W = W.float().contiguous()
    n, D1, D2 = W.shape
    r0, r1, r2 = ranks
    trunc = (r0 < n, r1 < D1, r2 < D2)
    norm2 = torch.linalg.vector_norm(W, dtype=torch.float64).item() ** 2

    def rel_error(fit2: float) -> float:
        return max(norm2 - fit2, 0.0) ** 0.5 / norm2**0.5 if norm2 else 0.0

    Wt = W.transpose(0, 1).contiguous() if trunc[0] or trunc[1] else None  # (D1, n, D2)
    # HOSVD start: Gram matrices of the three unfoldings.
    A0 = A1 = A2 = None
    if trunc[0]:
        flat = W.reshape(n, -1)
        A0, _ = leading_eigvecs(flat @ flat.T, r0)
    if trunc[1]:
        flat = Wt.reshape(D1, -1)
        A1, _ = leading_eigvecs(flat @ flat.T, r1)
    if trunc[2]:
        flat = W.reshape(-1, D2)
        A2, _ = leading_eigvecs(flat.T @ flat, r2)

    def mode2_input():
        """W x0 A0^T x1 A1^T as (r0, r1, D2)."""
        Z = _left(A0, W)  # (r0, D1, D2)
        return Z if A1 is None else A1.T @ Z

    Q = mode2_input()
    errors, sweep_seconds = [rel_error(torch.linalg.vector_norm(_right(Q, A2), dtype=torch.float64).item() ** 2)], []
    log.debug("HOSVD start: relative error %.6f", errors[0])

    needs_sweeps = sum(trunc) >= 2  # with one truncated mode HOSVD is already optimal
    for sweep in range(max_iter if needs_sweeps else 0):
        t0 = time.perf_counter()
        V = _right(Wt, A2) if Wt is not None else None  # W x2 A2^T as (D1, n, r2)
        if trunc[0]:
            X = _left(A1, V)  # (r1, n, r2)
            A0, fit2 = leading_eigvecs(torch.bmm(X, X.transpose(1, 2)).sum(0), r0)
        if trunc[1]:
            Y = (V if A0 is None else A0.T @ V).reshape(D1, -1)  # (D1, r0 * r2)
            A1, fit2 = leading_eigvecs(Y @ Y.T, r1)
        if trunc[2]:
            Q = mode2_input()
            flat = Q.reshape(-1, D2)  # (r0 * r1, D2)
            A2, fit2 = leading_eigvecs(flat.T @ flat, r2)
        errors.append(rel_error(fit2))
        sweep_seconds.append(time.perf_counter() - t0)
        log.debug("HOOI sweep %d: relative error %.6f (%.2fs)", sweep + 1, errors[-1], sweep_seconds[-1])
        if errors[-2] - errors[-1] < tol:
            break

    if not trunc[2]:
        Q = mode2_input()  # otherwise Q was formed in the last sweep, with the final A0 and A1
    core = _right(Q, A2)
    eye = lambda k: torch.eye(k, dtype=W.dtype)  # noqa: E731
    factors = [eye(n) if A0 is None else A0, eye(D1) if A1 is None else A1, eye(D2) if A2 is None else A2]
    if errors[-1] < 1e-2:  # ||W||^2 - ||G||^2 cancels in float32: measure a near-exact fit directly
        recon = torch.einsum("lab,nl,Da,Eb->nDE", *(t.double() for t in (core, *factors)))
        errors[-1] = (torch.linalg.vector_norm(W.double() - recon) / norm2**0.5).item() if norm2 else 0.0
    return core.contiguous(), factors, HooiInfo(errors, time.perf_counter() - start, sweep_seconds)
