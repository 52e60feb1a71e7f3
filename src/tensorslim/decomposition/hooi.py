"""Tucker decomposition of a 3-way tensor by HOSVD start + HOOI sweeps, in plain torch.

For W of shape (n, D1, D2) and ranks (r0, r1, r2) it returns orthonormal factors A0 (n, r0),
A1 (D1, r1), A2 (D2, r2) and the core G = W x0 A0^T x1 A1^T x2 A2^T of shape (r0, r1, r2), so that
W ~= G x0 A0 x1 A1 x2 A2. A mode whose rank equals its size keeps the identity (no work is spent
on it). Each factor is the leading eigenvectors of a Gram matrix, signs fixed so the result is
deterministic.

A sweep updates modes 0, 1, 2 in turn (tensorly's order, so both follow the same path). Every
product is one large matmul on W's own layout: V = W x2 A2^T is computed once per sweep and serves
modes 0 and 1, mode 2 projects on A0 first (r0 < n rows), the fit ||G|| comes from the eigenvalues
of the last Gram matrix, and the intermediates live in buffers allocated once.

Where the hardware multiplies bfloat16 natively (CPUs with AMX, CUDA GPUs with bf16), the sweeps
on large tensors run on a bfloat16 copy of W (float32 accumulation) until they converge, and
float32 sweeps finish: one when it confirms the bfloat16 error estimate, more when it does not.
Why each choice, with measurements: docs/decomposition.md, section 3.
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
    runs; estimates after bfloat16 sweeps, the last one always measured), and seconds."""

    errors: list[float]
    seconds: float
    sweep_seconds: list[float]
    sweep_dtype: str = "float32"

    @property
    def sweeps(self) -> int:
        return len(self.sweep_seconds)


PRECISIONS = ("auto", "float32", "bfloat16")
AUTO_BFLOAT16_NUMEL = 1 << 22  # "auto" keeps smaller tensors in float32: fast anyway, and noisier in bfloat16


def sweep_dtype(precision: str, device: torch.device, numel: int) -> torch.dtype:
    """The dtype of the sweep products for a tensor of `numel` elements: "float32", "bfloat16", or
    "auto" (bfloat16 for tensors of at least 4M elements where the device multiplies it natively:
    a CPU with AMX, a CUDA GPU with bf16; float32 otherwise)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    if precision != "auto":
        return getattr(torch, precision)
    if numel < AUTO_BFLOAT16_NUMEL:
        return torch.float32
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = device.type == "cpu" and bool(torch.cpu.get_capabilities().get("amx_bf16"))
    return torch.bfloat16 if native else torch.float32


def leading_eigvecs(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """Top-`rank` eigenvectors (float32 columns, signs fixed, on gram's device) of a symmetric PSD
    matrix, and the sum of their eigenvalues (the squared norm the projection keeps). A float32
    gram goes to numpy's LAPACK on the CPU whatever its device (it is at most D x D, and on the CPU
    numpy's thread pool is the one the float32 products use); a bfloat16 gram comes from torch's
    products and stays with torch."""
    if gram.dtype == torch.float32:
        vals, vecs = map(torch.from_numpy, np.linalg.eigh(gram.cpu().numpy()))
    else:
        vals, vecs = torch.linalg.eigh(gram.float())
    vals, vecs = vals.flip(0)[:rank], vecs.flip(1)[:, :rank]
    signs = torch.sign(vecs[vecs.abs().argmax(dim=0), torch.arange(rank, device=vecs.device)])
    signs[signs == 0] = 1
    return (vecs * signs).to(gram.device), vals.double().sum().item()


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (batched like torch.matmul), written into `out` if given. On CPU in float32 the product
    runs in numpy on the same memory: its OpenBLAS is faster than torch's MKL on these thin float32
    products on AMD CPUs (docs/decomposition.md), turns X @ X.T into a symmetric rank-k update (half
    the flops), and one thread pool for the whole sweep avoids two pools fighting over the cores."""
    if a.device.type != "cpu" or a.dtype != torch.float32:
        return torch.matmul(a, b, out=out)
    result = np.matmul(a.numpy(), b.numpy(), out=None if out is None else out.numpy())
    return out if out is not None else torch.from_numpy(result)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[...] = src (same shape; src may be a strided view); numpy as in _mm."""
    if dst.device.type != "cpu" or dst.dtype != torch.float32:
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


def tucker_hooi(
    W: torch.Tensor, ranks: tuple[int, int, int], *, tol: float = 1e-4, max_iter: int = 100, precision: str = "auto"
):
    """Tucker of W (n, D1, D2) with `ranks`; returns (core, [A0, A1, A2], HooiInfo), all float32.

    Starts from the leading Gram eigenvectors of each unfolding (HOSVD), then sweeps until the
    relative error improves by less than `tol` from one sweep to the next, or `max_iter` sweeps.
    With `max_iter=0` the result is the (truncated) HOSVD itself. `precision` (see sweep_dtype)
    sets the dtype of the sweep products. bfloat16 sweeps run until their error estimate improves
    by less than `tol` twice in a row; float32 sweeps follow, and the first of them ends the run if
    its error is within `tol` of the last bfloat16 estimate (otherwise the rounding noise exceeds
    `tol`, as on small tensors with tight tolerances, and float32 sweeps go on to convergence). All
    sweeps count against `max_iter`; the last one is always float32, so are core and factors.
    """
    start = time.perf_counter()
    W = W.detach().float().contiguous()
    n, D1, D2 = W.shape
    r0, r1, r2 = ranks
    trunc = (r0 < n, r1 < D1, r2 < D2)
    # float32 row norms summed in float64: exact enough, and much faster than a float64 norm of W
    norm2 = torch.linalg.vector_norm(W.view(-1, D2), dim=1).double().pow(2).sum().item()
    sweeps = max_iter if sum(trunc) >= 2 else 0  # with one truncated mode HOSVD is already optimal
    low = sweeps > 1 and sweep_dtype(precision, W.device, W.numel()) == torch.bfloat16
    X = W.bfloat16() if low else W  # the tensor the sweep products read
    buffers: dict[str, torch.Tensor] = {}  # sweep intermediates, allocated once and reused

    def buffer(name: str, X: torch.Tensor, *shape: int) -> torch.Tensor | None:
        """The float32 buffer `name`, or for bfloat16 X a bfloat16 view of its first half (so the
        float32 sweeps reuse the pages the bfloat16 ones touched)."""
        if not sweeps:
            return None
        if name not in buffers:
            buffers[name] = torch.empty(shape, dtype=W.dtype, device=W.device)
        full = buffers[name]
        if X.dtype == full.dtype:
            return full
        return full.view(-1).view(torch.uint8)[: full.numel() * X.element_size()].view(X.dtype).view(shape)

    def rel_error(fit2: float) -> float:
        return max(norm2 - fit2, 0.0) ** 0.5 / norm2**0.5 if norm2 else 0.0

    def eigvecs(flat: torch.Tensor, rank: int, columns: bool = False):
        """leading_eigvecs of flat @ flat.T (flat.T @ flat with `columns`)."""
        return leading_eigvecs(_mm(flat.T, flat) if columns else _mm(flat, flat.T), rank)

    def unfold1(Y: torch.Tensor, out=None) -> torch.Tensor:
        """Y (k, D1, m) unfolded along its middle axis: (D1, k * m), contiguous rows, so that its
        Gram matrix is a rank-k update."""
        k, _, m = Y.shape
        return _copy(Y.new_empty(D1, k, m) if out is None else out, Y.transpose(0, 1)).view(D1, -1)

    def mode2_input(X, A0, A1):
        """X x0 A0^T x1 A1^T as (r0, r1, D2)."""
        Z = _left(A0, X, buffer("Z", X, r0, D1, D2))  # (r0, D1, D2)
        return Z if A1 is None else _mm(A1.T, Z, buffer("Q", X, r0, r1, D2))

    # HOSVD start: Gram matrices of the unfoldings. The first sweep starts by recomputing A0 from
    # A1 and A2, so the HOSVD A0 (and its error) is only needed when no sweep runs.
    A0 = A1 = A2 = None
    if trunc[0] and not sweeps:
        A0, _ = eigvecs(X.reshape(n, -1), r0)
    if trunc[1]:
        A1, _ = eigvecs(unfold1(X), r1)
    if trunc[2]:
        A2, _ = eigvecs(X.reshape(-1, D2), r2, columns=True)

    errors, sweep_seconds = [], []
    if not sweeps:
        Q = mode2_input(X, A0, A1)
        errors.append(rel_error(torch.linalg.vector_norm(_right(Q, A2), dtype=torch.float64).item() ** 2))
        log.debug("HOSVD: relative error %.6f", errors[0])
    # bfloat16 sweeps until their (noisy) error estimate improves by less than tol twice in a row,
    # then float32 sweeps: the first of them ends the run if its error is within tol of the last
    # bfloat16 estimate, later ones when one improves by less than tol. The last sweep is float32.
    since = 0 if X is W else None  # index of the first float32 sweep's error

    def to_float32():
        nonlocal X, since
        X, since = W, len(errors)  # frees the bfloat16 copy of W

    for sweep in range(sweeps):
        t0 = time.perf_counter()
        if since is None and sweep == sweeps - 1:
            to_float32()
        cast = lambda A: None if A is None else A.to(X.dtype)  # noqa: E731  (factors stay float32)
        V = _right(X, cast(A2), buffer("V", X, n, D1, r2))  # X x2 A2^T as (n, D1, r2)
        if trunc[0]:
            flat = (V if A1 is None else _mm(cast(A1).T, V, buffer("T", X, n, r1, r2))).reshape(n, -1)  # (n, r1 * r2)
            A0, fit2 = eigvecs(flat, r0)
        if trunc[1]:
            Y = _left(cast(A0), V, buffer("Y", X, r0, D1, r2))  # (r0, D1, r2)
            A1, fit2 = eigvecs(unfold1(Y, buffer("Yt", X, D1, r0, r2)), r1)
        if trunc[2]:
            Q = mode2_input(X, cast(A0), cast(A1))
            A2, fit2 = eigvecs(Q.reshape(-1, D2), r2, columns=True)  # (r0 * r1, D2)
        errors.append(rel_error(fit2))
        sweep_seconds.append(time.perf_counter() - t0)
        log.debug("HOOI sweep %d (%s): relative error %.6f (%.2fs)", sweep + 1, X.dtype, errors[-1], sweep_seconds[-1])
        gain = errors[-2] - errors[-1] if len(errors) > 1 else float("inf")
        if since is None:  # bfloat16
            if len(errors) > 2 and max(errors[-3] - errors[-2], gain) < tol:
                to_float32()
        elif since > 0 and len(errors) == since + 1:  # the first float32 sweep after bfloat16 ones
            if abs(gain) < tol:
                break
        elif len(errors) > since + 1 and gain < tol:
            break

    if not trunc[2]:
        Q = mode2_input(W, A0, A1)  # otherwise Q was formed in the last sweep, a float32 one
    core = _right(Q, A2)
    factors = [torch.eye(k, device=W.device) if A is None else A for A, k in ((A0, n), (A1, D1), (A2, D2))]
    if errors[-1] < 1e-2:  # ||W||^2 - ||G||^2 cancels in float32: measure a near-exact fit directly
        recon = torch.einsum("lab,nl,Da,Eb->nDE", *(t.double() for t in (core, *factors)))
        errors[-1] = (torch.linalg.vector_norm(W.double() - recon) / norm2**0.5).item() if norm2 else 0.0
    dtype = "bfloat16" if low else "float32"
    return core.contiguous(), factors, HooiInfo(errors, time.perf_counter() - start, sweep_seconds, dtype)


def unfolding_energies(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared singular values (float64, descending) of the three unfoldings of W (n, R, C): slices,
    rows, columns, from their Gram matrices."""
    n, R, C = W.shape
    W = W.float()
    grams = (
        W.reshape(n, -1) @ W.reshape(n, -1).T,
        (lambda f: f @ f.T)(W.transpose(0, 1).reshape(R, -1)),
        (lambda f: f.T @ f)(W.reshape(-1, C)),
    )
    return tuple(torch.linalg.eigvalsh(g.double()).flip(0).clamp_min(0) for g in grams)
