"""Data-aware fits: factors that minimise the error of what the layers compute on calibration inputs,
not the error of the weights.

Slice i of a group (R x C) meets its module's inputs on one side: on its rows when the slice is
[in, out] (y = x W_i), on its columns when it is [out, in] (y = x W_i^T). With Sigma_i the second
moment of those inputs (X_i^T X_i / tokens), the output error of the approximation
W_hat_i = U_i S_i V_i is

    f_i = tr(Delta_i^T Sigma_i Delta_i)  (input on rows),   f_i = tr(Delta_i Sigma_i Delta_i^T)  (columns)

with Delta_i = W_i - W_hat_i; written once, f_i = tr(A_i Delta_i B_i Delta_i^T) with (A_i, B_i) =
(Sigma_i, I) or (I, Sigma_i). Every method minimises F = sum_i f_i (docs/decomposition.md, section 4
states the update equations):

- `whitened_svd` (lowrank, per slice): the closed form of SVD-LLM. With Sigma = L L^T, f is the
  Frobenius error of L^T W (rows) or W L (columns), so the truncated SVD of that product, mapped back
  through L^-1, is optimal.
- `refine` (shared and tucker: U and V serve slices whose inputs differ): block coordinate descent
  from the weight-only fit. U, then V, are the solutions of generalised Sylvester equations
  sum_k K_k X M_k + X M_0 = R, solved by preconditioned conjugate gradients warm-started at the
  current factor; each is then re-orthonormalised (QR, the triangular factor moved into the cores,
  F unchanged). The cores follow in closed form (shared: one small solve per slice) or, for the
  tucker bank S_i = sum_l P_il C_l, C and then P by conjugate gradients.
  Every step lowers F or keeps it, so F decreases monotonically; sweeps stop when the relative
  calibrated error F / F(0) improves by less than `tol` in a sweep, or after `max_iter` sweeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from ..errors import TensorslimError
from .slice_weights import SliceWeights

log = logging.getLogger(__name__)

CG_STEPS = 6  # conjugate-gradient steps per factor update (warm-started; each step lowers F)


def weighted_error(W: torch.Tensor, W_hat: torch.Tensor | None, w: SliceWeights) -> float:
    """F = sum_i f_i (module docstring) for the (n, R, C) stacks W and W_hat (None: all zeros)."""
    total = 0.0
    for index, cov, on_rows in ((w.rows_index, w.rows_cov, True), (w.cols_index, w.cols_cov, False)):
        for chunk in torch.split(torch.arange(len(index)), 16):
            D = W[index[chunk]] - (0 if W_hat is None else W_hat[index[chunk]])
            D = D.to(cov.dtype)
            product = cov[chunk] @ D if on_rows else D @ cov[chunk]
            total += (product * D).sum(dtype=torch.float64).item()
    return total


def whitened_svd(W: torch.Tensor, w: SliceWeights, r: int) -> dict[str, torch.Tensor]:
    """The rank-r minimiser of every f_i (SVD-LLM): U (n, R, r), S (n, r, r) diagonal, V (n, r, C),
    float32; float64 inside (Cholesky factors of ill-conditioned moments)."""
    n, R, C = W.shape
    U, S, V = W.new_empty(n, R, r), W.new_zeros(n, r, r), W.new_empty(n, r, C)
    if len(w.rows_index):
        L = torch.linalg.cholesky(w.rows_cov.double())  # Sigma = L L^T, f = ||L^T Delta||^2
        Us, s, Vh = torch.linalg.svd(L.mT @ W[w.rows_index].double(), full_matrices=False)
        U[w.rows_index] = torch.linalg.solve_triangular(L.mT, Us[..., :r], upper=True).float()
        S[w.rows_index] = torch.diag_embed(s[..., :r]).float()
        V[w.rows_index] = Vh[..., :r, :].float()
    if len(w.cols_index):
        L = torch.linalg.cholesky(w.cols_cov.double())  # f = ||Delta L||^2
        Us, s, Vh = torch.linalg.svd(W[w.cols_index].double() @ L, full_matrices=False)
        U[w.cols_index] = Us[..., :r].float()
        S[w.cols_index] = torch.diag_embed(s[..., :r]).float()
        V[w.cols_index] = torch.linalg.solve_triangular(L, Vh[..., :r, :], upper=False, left=False).float()
    return {"U": U.contiguous(), "S": S, "V": V.contiguous()}


# --- the Sylvester-type solves ---------------------------------------------------------------------


def unique_moments(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct moments (u, m, m), index (n,) of each slice's one): slices of a module, or modules
    reading one input (q, k, v), share a moment and are summed before the products."""
    keys: dict[tuple, list[int]] = {}
    inverse, distinct = [], []
    for c in cov:
        key = (c.shape, c.diagonal().sum().item(), c[0].sum().item())
        found = next((j for j in keys.get(key, []) if torch.equal(distinct[j], c)), None)
        if found is None:
            found = len(distinct)
            distinct.append(c)
            keys.setdefault(key, []).append(found)
        inverse.append(found)
    if not distinct:
        return cov, torch.zeros(0, dtype=torch.long, device=cov.device)
    return torch.stack(distinct), torch.tensor(inverse, device=cov.device)


JITTERS = (1e-10, 1e-8, 1e-6, 1e-4)  # relative to the mean diagonal, tried in turn


def _chol(M: torch.Tensor) -> torch.Tensor:
    """Cholesky factor (float64) of each symmetric PSD matrix in M (..., m, m), with the smallest
    relative jitter on the diagonal (JITTERS) that makes all of them positive definite: a singular
    M (factors of deficient rank, an input confined to a subspace) fails on rounding without it."""
    M = M.double()
    scale = M.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-30)[..., None, None]
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    for jitter in JITTERS:
        L, info = torch.linalg.cholesky_ex(M + jitter * scale * eye)
        if not info.any():
            return L
    raise TensorslimError(
        "a moment matrix of the data-aware fit is not positive semi-definite",
        "check the calibration data and the teacher for NaN or infinite values",
    )


def _spd_inverse(M: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_inverse(_chol(M))


def sylvester_pcg(K: torch.Tensor, M: torch.Tensor, M0: torch.Tensor, rhs: torch.Tensor, X: torch.Tensor):
    """Approximately solve sum_k K_k X M_k + X M0 = rhs for X (m, r), from X, by preconditioned CG.

    K (u, m, m) and M (u, r, r), M0 (r, r) are symmetric positive semi-definite, and the operator
    positive definite. The preconditioner inverts the Kronecker product K_bar (x) M_bar closest in
    trace weighting: M_bar = sum_k M_k + M0, K_bar = (sum_k tr(M_k) K_k + tr(M0) I) / tr(M_bar).
    """

    def apply(Y):
        out = Y @ M0
        if len(K):
            out = out + (K @ Y @ M).sum(0)
        return out

    M_bar = M.sum(0) + M0
    weights = M.diagonal(dim1=-2, dim2=-1).sum(-1)
    K_bar = torch.einsum("k,kab->ab", weights, K) + M0.trace() * torch.eye(K.shape[-1], dtype=K.dtype)
    K_inv = _spd_inverse(K_bar / M_bar.trace().clamp_min(1e-30)).to(X.dtype)
    M_inv = _spd_inverse(M_bar).to(X.dtype)
    precondition = lambda Y: K_inv @ Y @ M_inv  # noqa: E731
    return pcg(apply, rhs, X, precondition)


def pcg(apply: Callable, rhs: torch.Tensor, X: torch.Tensor, precondition: Callable) -> torch.Tensor:
    """CG_STEPS of preconditioned conjugate gradients on the SPD system apply(X) = rhs, from X; each
    step lowers the quadratic 1/2 <X, apply(X)> - <rhs, X> (so the calibrated error)."""
    residual = rhs - apply(X)
    start = residual.norm()
    z = precondition(residual)
    direction, rz = z, (residual * z).sum()
    floor = 10 * torch.finfo(X.dtype).eps  # a system solved to rounding (small ones are, in a few steps)
    for _ in range(CG_STEPS):
        if residual.norm() <= floor * start or rz <= 0:
            break
        Ad = apply(direction)
        curvature = (direction * Ad).sum()
        if curvature <= 0:  # only rounding left along `direction`: a step would divide by noise
            break
        step = rz / curvature
        X = X + step * direction
        residual = residual - step * Ad
        z = precondition(residual)
        rz_next = (residual * z).sum()
        direction, rz = z + (rz_next / rz) * direction, rz_next
    return X


# --- block coordinate descent for shared bases (shared, tucker) ------------------------------------


def _pooled_factors(weights: SliceWeights):
    """Cholesky factors (La, Lb) of the mean moment of each side (None for a side without slices)."""
    La = torch.linalg.cholesky(weights.rows_cov.double().mean(0)) if len(weights.rows_index) else None
    Lb = torch.linalg.cholesky(weights.cols_cov.double().mean(0)) if len(weights.cols_index) else None
    return La, Lb


def pooled_whitened(W: torch.Tensor, weights: SliceWeights) -> torch.Tensor:
    """La^T W_i Lb for every slice (`_pooled_factors`), in W's dtype: the stack whose weight error
    is F when every slice of a side shares one moment."""
    return _whiten(W, *_pooled_factors(weights))


def slicewise_whitened(W: torch.Tensor, weights: SliceWeights) -> torch.Tensor:
    """Every slice whitened by its own moment on its input side (L_i^T W_i, or W_i L_i with
    L_i L_i^T its moment), in W's dtype: the stack whose slice i has weight error f_i."""
    Ww = W.double().clone()
    if len(weights.rows_index):
        Ww[weights.rows_index] = _chol(weights.rows_cov).mT @ Ww[weights.rows_index]
    if len(weights.cols_index):
        Ww[weights.cols_index] = Ww[weights.cols_index] @ _chol(weights.cols_cov)
    return Ww.to(W.dtype)


def _whiten(W: torch.Tensor, La: torch.Tensor | None, Lb: torch.Tensor | None) -> torch.Tensor:
    Ww = W.double()
    if La is not None:
        Ww = La.T @ Ww
    if Lb is not None:
        Ww = Ww @ Lb
    return Ww.to(W.dtype)


def pooled_start(W: torch.Tensor, weights: SliceWeights, fit: Callable) -> tuple[dict[str, torch.Tensor], dict]:
    """The weight-only fit of W whitened by the mean moment of each side, mapped back: the optimum
    of F when all slices of a side share one moment, and the start of `refine` otherwise.

    `fit(W') -> (factors, record)` on the whitened stack La^T W Lb (La La^T: mean rows moment, Lb
    Lb^T: mean columns moment; identity for a side without slices). U = La^-T U', V = V' Lb^-1,
    each re-orthonormalised with its triangular factor moved into the cores.
    """
    La, Lb = _pooled_factors(weights)
    factors, record = fit(_whiten(W, La, Lb))
    U, V = factors["U"].double(), factors["V"].double()
    name = "C" if "P" in factors else "S"
    core = factors[name].double()
    if La is not None:
        U, T = torch.linalg.qr(torch.linalg.solve_triangular(La.T, U, upper=True))
        core = T @ core
    if Lb is not None:
        Q, T = torch.linalg.qr(torch.linalg.solve_triangular(Lb, V, upper=False, left=False).T)
        V, core = Q.T, core @ T.T
    return {**factors, "U": U.to(W.dtype).contiguous(), "V": V.to(W.dtype).contiguous(), name: core.to(W.dtype)}, record


class _Moments:
    """The damped moments of a group, deduplicated: slice i of `rows` uses K[inv[i]]."""

    def __init__(self, index: torch.Tensor, cov: torch.Tensor):
        self.index = index
        self.K, self.inv = unique_moments(cov)

    def __len__(self) -> int:
        return len(self.index)

    def sum_by_moment(self, per_slice: torch.Tensor) -> torch.Tensor:
        """(n_side, a, b) -> (u, a, b): the per-slice terms summed over slices sharing a moment."""
        out = per_slice.new_zeros(len(self.K), *per_slice.shape[1:])
        return out.index_add_(0, self.inv, per_slice)


def refine(
    W: torch.Tensor,
    weights: SliceWeights,
    factors: dict[str, torch.Tensor],
    *,
    tol: float,
    max_iter: int,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Lower F from a weight-only fit of a shared-basis method (module docstring).

    `factors`: U (R, r1) orthonormal, V (r2, C) with orthonormal rows, and either S (n, r1, r2)
    (shared) or P (n, l) and C (l, r1, r2) (tucker). Returns the same names and a record with the
    relative calibrated error F / F(0) at the start and after each sweep.
    """
    start = time.perf_counter()
    rows = _Moments(weights.rows_index, weights.rows_cov)
    cols = _Moments(weights.cols_index, weights.cols_cov)
    U, V = factors["U"].clone(), factors["V"].clone()
    bank = "P" in factors
    P, core = (factors["P"].clone(), factors["C"].clone()) if bank else (None, factors["S"].clone())
    cores = lambda: core if P is None else torch.einsum("nl,lab->nab", P, core)  # noqa: E731
    total = max(weighted_error(W, None, weights), 1e-30)
    errors = [weighted_error(W, U @ cores() @ V, weights) / total]
    for sweep in range(max_iter):
        if U.shape[0] > U.shape[1]:  # a square orthonormal U (full rank) spans everything already
            U = _update_U(W, rows, cols, U, V, cores())
            U, T = torch.linalg.qr(U)
            core = T @ core
        if V.shape[1] > V.shape[0]:
            Q, T = torch.linalg.qr(_update_Vt(W, rows, cols, U, V, cores()))
            V, core = Q.T.contiguous(), core @ T.T
        core, P = _update_cores(W, rows, cols, U, V, core, P)
        errors.append(weighted_error(W, U @ cores() @ V, weights) / total)
        log.debug("calibrated sweep %d: relative error %.6f", sweep + 1, errors[-1])
        if errors[-2] - errors[-1] < tol:
            break
    out = {"U": U.contiguous(), "V": V}
    out.update({"P": P, "C": core} if bank else {"S": core})
    return out, {"calibrated_errors": errors, "seconds": time.perf_counter() - start}


def _update_U(W, rows: _Moments, cols: _Moments, U, V, S) -> torch.Tensor:
    """U from sum_rows A_i U (S_i S_i^T) + U sum_cols S_i (V B_i V^T) S_i^T = rhs (V orthonormal)."""
    Sr, Sc = S[rows.index], S[cols.index]
    M = rows.sum_by_moment(Sr @ Sr.mT)
    rhs = (rows.K @ rows.sum_by_moment(W[rows.index] @ V.T @ Sr.mT)).sum(0) if len(rows) else 0
    M0 = U.new_zeros(U.shape[1], U.shape[1])
    if len(cols):
        VB = V @ cols.K  # (u, r2, C)
        B_small = VB @ V.T  # (u, r2, r2)
        M0 = (Sc @ B_small[cols.inv] @ Sc.mT).sum(0)
        rhs = rhs + (W[cols.index] @ VB[cols.inv].mT @ Sc.mT).sum(0)
    return sylvester_pcg(rows.K, M, M0, rhs, U)


def _update_Vt(W, rows: _Moments, cols: _Moments, U, V, S) -> torch.Tensor:
    """V^T from sum_cols B_i V^T (S_i^T S_i) + V^T sum_rows S_i^T (U^T A_i U) S_i = rhs (U orthonormal)."""
    Sr, Sc = S[rows.index], S[cols.index]
    M = cols.sum_by_moment(Sc.mT @ Sc)
    rhs = (cols.K @ cols.sum_by_moment(W[cols.index].mT @ U @ Sc)).sum(0) if len(cols) else 0
    M0 = V.new_zeros(V.shape[0], V.shape[0])
    if len(rows):
        AU = rows.K @ U  # (u, R, r1)
        A_small = U.T @ AU  # (u, r1, r1)
        M0 = (Sr.mT @ A_small[rows.inv] @ Sr).sum(0)
        rhs = rhs + (W[rows.index].mT @ AU[rows.inv] @ Sr).sum(0)
    return sylvester_pcg(cols.K, M, M0, rhs, V.T.contiguous())


def _update_cores(W, rows: _Moments, cols: _Moments, U, V, core, P):
    """The cores for fixed U, V: shared S_i by one solve each; tucker C, then P, by CG."""
    n = W.shape[0]
    r1, r2 = U.shape[1], V.shape[0]
    R = W.new_empty(n, r1, r2)  # R_i = U^T A_i W_i B_i V^T
    A_small = W.new_empty(0, r1, r1)
    B_small = W.new_empty(0, r2, r2)
    if len(rows):
        AU = rows.K @ U
        A_small = U.T @ AU
        R[rows.index] = AU[rows.inv].mT @ W[rows.index] @ V.T
    if len(cols):
        VB = V @ cols.K
        B_small = VB @ V.T
        R[cols.index] = U.T @ W[cols.index] @ VB[cols.inv].mT
    if P is None:
        S = R.clone()
        if len(rows):
            S[rows.index] = torch.cholesky_solve(R[rows.index].double(), _chol(A_small)[rows.inv]).to(R.dtype)
        if len(cols):
            Rc = R[cols.index].double().mT  # S B = R  <=>  B S^T = R^T
            S[cols.index] = torch.cholesky_solve(Rc, _chol(B_small)[cols.inv]).mT.to(R.dtype)
        return S, None

    def weigh(S):  # (n, r1, r2) -> A_small S_i or S_i B_small per slice
        out = S.clone()
        if len(rows):
            out[rows.index] = A_small[rows.inv] @ S[rows.index]
        if len(cols):
            out[cols.index] = S[cols.index] @ B_small[cols.inv]
        return out

    diag = W.new_empty(n, r1, r2)
    if len(rows):
        diag[rows.index] = A_small.diagonal(dim1=-2, dim2=-1)[rows.inv][:, :, None].expand(-1, r1, r2)
    if len(cols):
        diag[cols.index] = B_small.diagonal(dim1=-2, dim2=-1)[cols.inv][:, None, :].expand(-1, r1, r2)
    jacobi = torch.einsum("nl,nab->lab", P * P, diag).clamp_min(1e-30)
    core = pcg(
        lambda C: torch.einsum("nl,nab->lab", P, weigh(torch.einsum("nl,lab->nab", P, C))),
        torch.einsum("nl,nab->lab", P, R),
        core,
        lambda Y: Y / jacobi,
    )
    # P: each row's l x l system, solved jointly by CG (one weighted core product per step; the exact
    # per-slice solve would cost l of them). Jacobi preconditioner: G_i[l, l] with the projected
    # moments replaced by their diagonals.
    weight = torch.einsum("nab,lab->nl", diag, core * core).clamp_min(1e-30)
    P = pcg(
        lambda Q: torch.einsum("nab,lab->nl", weigh(torch.einsum("nl,lab->nab", Q, core)), core),
        torch.einsum("nab,lab->nl", R, core),
        P,
        lambda Y: Y / weight,
    )
    return core, P
