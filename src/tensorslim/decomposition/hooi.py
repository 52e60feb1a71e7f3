"""Tucker decomposition of a 3-way tensor by HOSVD start + HOOI sweeps, in plain torch.

For W of shape (n, D1, D2) and ranks (r0, r1, r2) it returns orthonormal factors A0 (n, r0),
A1 (D1, r1), A2 (D2, r2) and the core G = W x0 A0^T x1 A1^T x2 A2^T of shape (r0, r1, r2), so that
W ~= G x0 A0 x1 A1 x2 A2. A mode whose rank equals its size keeps the identity (no work is spent
on it). Each factor is the leading eigenvectors of a Gram matrix, signs fixed so the result is
deterministic.

A sweep updates modes 0, 1, 2 in turn (tensorly's order, so both follow the same path). Every
product is one large matmul on W's own layout: V = W x2 A2^T is computed once per sweep and serves
modes 0 and 1, mode 2 projects on A0 first (r0 < n rows), the fit ||G|| comes from the eigenvalues
of the last Gram matrix, and the intermediates live in buffers allocated once. Why each choice,
with timings: docs/decomposition.md, section 3.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class HooiInfo:
    """What a run did: the relative error after each sweep (after the HOSVD start when no sweep
    runs), and seconds."""

    errors: list[float]
    seconds: float
    sweep_seconds: list[float]

    @property
    def sweeps(self) -> int:
        return len(self.sweep_seconds)


def leading_eigvecs(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """Top-`rank` eigenvectors (columns, signs fixed, on gram's device) of a symmetric PSD matrix,
    and the sum of their eigenvalues (the squared norm the projection keeps). LAPACK in numpy on
    the CPU, whatever the device: the matrix is at most D x D."""
    vals, vecs = np.linalg.eigh(gram.cpu().numpy())
    vals, vecs = vals[::-1][:rank], vecs[:, ::-1][:, :rank]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(rank)])
    signs[signs == 0] = 1
    return torch.from_numpy(vecs * signs).to(gram.device), float(vals.sum(dtype=np.float64))


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (batched like torch.matmul), written into `out` if given. On CPU the product runs in
    numpy on the same memory: its OpenBLAS is 1.5-3x faster than torch's MKL on these thin float32
    products on AMD CPUs, turns X @ X.T into a symmetric rank-k update (half the flops), and one
    thread pool for the whole sweep avoids two pools fighting over the cores."""
    if a.device.type != "cpu":
        return torch.matmul(a, b, out=out)
    result = np.matmul(a.numpy(), b.numpy(), out=None if out is None else out.numpy())
    return out if out is not None else torch.from_numpy(result)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[...] = src (same shape; src may be a strided view); numpy on CPU, as in _mm."""
    if dst.device.type != "cpu":
        return dst.copy_(src)
    np.copyto(dst.numpy(), src.numpy())
    return dst


def _left(A, X: torch.Tensor, out=None) -> torch.Tensor:
    """A^T applied to the first axis of X (k, ...) -> (r, ...), as one matmul."""
    if A is None:
        return X
    shape = (A.shape[1], *X.shape[1:])
    flat = None if out is None else out.view(A.shape[1], -1)
    return _mm(A.T, X.reshape(X.shape[0], -1), flat).reshape(shape)


def _right(X: torch.Tensor, A, out=None) -> torch.Tensor:
    """A applied to the last axis of X (..., k) -> (..., r), as one matmul."""
    if A is None:
        return X
    flat = None if out is None else out.view(-1, A.shape[1])
    return _mm(X.reshape(-1, X.shape[-1]), A, flat).reshape(*X.shape[:-1], A.shape[1])


def tucker_hooi(W: torch.Tensor, ranks: tuple[int, int, int], *, tol: float = 1e-4, max_iter: int = 100):
    """Tucker of W (n, D1, D2) with `ranks`; returns (core, [A0, A1, A2], HooiInfo).

    Starts from the leading Gram eigenvectors of each unfolding (HOSVD), then sweeps until the
    relative error improves by less than `tol` from one sweep to the next, or `max_iter` sweeps.
    With `max_iter=0` the result is the (truncated) HOSVD itself.
    """
    start = time.perf_counter()
    W = W.detach().float().contiguous()
    n, D1, D2 = W.shape
    r0, r1, r2 = ranks
    trunc = (r0 < n, r1 < D1, r2 < D2)
    # float32 row norms summed in float64: exact enough, and 20x faster than a float64 norm of W
    norm2 = torch.linalg.vector_norm(W.view(-1, D2), dim=1).double().pow(2).sum().item()
    sweeps = max_iter if sum(trunc) >= 2 else 0  # with one truncated mode HOSVD is already optimal
    buffers: dict[str, torch.Tensor] = {}  # sweep intermediates, allocated once and reused

    def buffer(name: str, *shape: int) -> torch.Tensor | None:
        if not sweeps:
            return None
        if name not in buffers:
            buffers[name] = torch.empty(shape, dtype=W.dtype, device=W.device)
        return buffers[name]

    def rel_error(fit2: float) -> float:
        return max(norm2 - fit2, 0.0) ** 0.5 / norm2**0.5 if norm2 else 0.0

    def mode1_gram(X: torch.Tensor, out=None) -> torch.Tensor:
        """Gram matrix (D1 x D1) of X (k, D1, m) unfolded along its middle axis."""
        k, _, m = X.shape
        flat = _copy(X.new_empty(D1, k, m) if out is None else out, X.transpose(0, 1)).view(D1, -1)
        return _mm(flat, flat.T)  # contiguous rows, so that the product is a rank-k update

    def mode2_input():
        """W x0 A0^T x1 A1^T as (r0, r1, D2)."""
        Z = _left(A0, W, buffer("Z", r0, D1, D2))  # (r0, D1, D2)
        return Z if A1 is None else _mm(A1.T, Z, buffer("Q", r0, r1, D2))

    # HOSVD start: Gram matrices of the unfoldings. The first sweep starts by recomputing A0 from
    # A1 and A2, so the HOSVD A0 (and its error) is only needed when no sweep runs.
    A0 = A1 = A2 = None
    if trunc[0] and not sweeps:
        flat = W.reshape(n, -1)
        A0, _ = leading_eigvecs(_mm(flat, flat.T), r0)
    if trunc[1]:
        A1, _ = leading_eigvecs(mode1_gram(W), r1)
    if trunc[2]:
        flat = W.reshape(-1, D2)
        A2, _ = leading_eigvecs(_mm(flat.T, flat), r2)

    errors, sweep_seconds = [], []
    if not sweeps:
        Q = mode2_input()
        errors.append(rel_error(torch.linalg.vector_norm(_right(Q, A2), dtype=torch.float64).item() ** 2))
        log.debug("HOSVD: relative error %.6f", errors[0])
    for sweep in range(sweeps):
        t0 = time.perf_counter()
        V = _right(W, A2, buffer("V", n, D1, r2))  # W x2 A2^T as (n, D1, r2)
        if trunc[0]:
            flat = (V if A1 is None else _mm(A1.T, V, buffer("T", n, r1, r2))).reshape(n, -1)  # (n, r1 * r2)
            A0, fit2 = leading_eigvecs(_mm(flat, flat.T), r0)
        if trunc[1]:
            Y = _left(A0, V, buffer("Y", r0, D1, r2))  # (r0, D1, r2)
            A1, fit2 = leading_eigvecs(mode1_gram(Y, buffer("Yt", D1, *Y.shape[::2])), r1)
        if trunc[2]:
            Q = mode2_input()
            flat = Q.reshape(-1, D2)  # (r0 * r1, D2)
            A2, fit2 = leading_eigvecs(_mm(flat.T, flat), r2)
        errors.append(rel_error(fit2))
        sweep_seconds.append(time.perf_counter() - t0)
        log.debug("HOOI sweep %d: relative error %.6f (%.2fs)", sweep + 1, errors[-1], sweep_seconds[-1])
        if len(errors) > 1 and errors[-2] - errors[-1] < tol:
            break

    if not trunc[2]:
        Q = mode2_input()  # otherwise Q was formed in the last sweep, with the final A0 and A1
    core = _right(Q, A2)
    eye = lambda k: torch.eye(k, dtype=W.dtype, device=W.device)  # noqa: E731
    factors = [eye(n) if A0 is None else A0, eye(D1) if A1 is None else A1, eye(D2) if A2 is None else A2]
    if errors[-1] < 1e-2:  # ||W||^2 - ||G||^2 cancels in float32: measure a near-exact fit directly
        recon = torch.einsum("lab,nl,Da,Eb->nDE", *(t.double() for t in (core, *factors)))
        errors[-1] = (torch.linalg.vector_norm(W.double() - recon) / norm2**0.5).item() if norm2 else 0.0
    return core.contiguous(), factors, HooiInfo(errors, time.perf_counter() - start, sweep_seconds)
