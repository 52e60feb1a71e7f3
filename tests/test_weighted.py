"""Data-aware fits (decomposition.weighted) against independent references: dense Kronecker solves,
least squares on vectorised problems, explicit inputs instead of moments, autograd gradients."""

import pytest
import torch

from tensorslim.decomposition import weighted
from tensorslim.decomposition.hooi import tucker_hooi
from tensorslim.decomposition.methods import Method, get_method
from tensorslim.decomposition.slice_weights import SliceWeights, relative_weights
from tensorslim.decomposition.slices import Group
from tensorslim.decomposition.weighted import (
    refine,
    sylvester_pcg,
    unique_moments,
    weighted_error,
    whitened_svd,
)
from tensorslim.errors import TensorslimError


def inputs(m: int, tokens: int, seed: int) -> torch.Tensor:
    """Anisotropic, correlated inputs (tokens, m), as activations are."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, m, generator=g, dtype=torch.float64) * torch.logspace(0, -2, m)) @ torch.randn(
        m, m, generator=g, dtype=torch.float64
    )


def moment(X: torch.Tensor) -> torch.Tensor:
    return X.T @ X / len(X)


def sides(n: int) -> tuple[list[int], list[int]]:
    """Slices with their input on the rows, and on the columns."""
    return [i for i in range(n) if i % 3 != 2], [i for i in range(n) if i % 3 == 2]


def problem(n=7, R=10, C=10, tokens=40, seed=0):
    ROWS, COLS = sides(n)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, R, C, generator=g, dtype=torch.float64)
    X = {i: inputs(R if i in ROWS else C, tokens, seed + 1 + i) for i in range(n)}
    w = SliceWeights(
        torch.tensor(ROWS),
        torch.stack([moment(X[i]) for i in ROWS]),
        torch.tensor(COLS),
        torch.stack([moment(X[i]) for i in COLS]),
    )
    return W, X, w


def chol_sides(w: SliceWeights, i: int, R: int, C: int):
    """(L_A, L_B) with A = L_A L_A^T, B = L_B L_B^T for slice i (identity on the non-input side)."""
    rows, cols = w.rows_index.tolist(), w.cols_index.tolist()
    if i in rows:
        return torch.linalg.cholesky(w.rows_cov[rows.index(i)].double()), torch.eye(C, dtype=torch.float64)
    return torch.eye(R, dtype=torch.float64), torch.linalg.cholesky(w.cols_cov[cols.index(i)].double())


def test_weighted_error_is_the_output_error_on_the_inputs():
    W, X, w = problem()
    W_hat = W + 0.1 * torch.randn_like(W)
    ROWS, _ = sides(len(W))
    expected = 0.0
    for i in range(len(W)):
        D = W[i] - W_hat[i]
        # input on rows: y = x W_i; on columns: y = x W_i^T
        expected += ((X[i] @ D).pow(2).sum() if i in ROWS else (X[i] @ D.T).pow(2).sum()).item() / len(X[i])
    assert weighted_error(W, W_hat, w) == pytest.approx(expected, rel=1e-10)
    assert weighted_error(W, None, w) == pytest.approx(weighted_error(W, torch.zeros_like(W), w))


def test_sylvester_pcg_matches_the_dense_kronecker_solve(monkeypatch):
    monkeypatch.setattr(weighted, "CG_STEPS", 400)
    m, r = 9, 4
    K = torch.stack([moment(inputs(m, 30, s)) for s in range(3)])
    M = torch.stack([moment(inputs(r, 20, 10 + s)) for s in range(3)])
    M0 = moment(inputs(r, 20, 20))
    rhs = torch.randn(m, r, dtype=torch.float64)
    X = sylvester_pcg(K, M, M0, rhs, torch.zeros(m, r, dtype=torch.float64))
    # column-major vec: vec(K X M) = (M^T kron K) vec(X)
    eye = torch.eye(m, dtype=torch.float64)
    op = sum(torch.kron(M[k].T.contiguous(), K[k].contiguous()) for k in range(3)) + torch.kron(M0.T.contiguous(), eye)
    dense = torch.linalg.solve(op, rhs.T.reshape(-1)).reshape(r, m).T
    torch.testing.assert_close(X, dense, rtol=1e-6, atol=1e-8)


def test_shared_core_update_is_the_least_squares_solution():
    W, _, w = problem()
    n, R, C = W.shape
    U = torch.linalg.qr(torch.randn(R, 4, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(C, 3, dtype=torch.float64))[0].T
    rows, cols = weighted._Moments(w.rows_index, w.rows_cov), weighted._Moments(w.cols_index, w.cols_cov)
    S, _ = weighted._update_cores(W, rows, cols, U, V, torch.zeros(n, 4, 3, dtype=torch.float64), None)
    for i in range(n):
        LA, LB = chol_sides(w, i, R, C)
        design = torch.kron((V @ LB).T.contiguous(), (LA.T @ U).contiguous())  # vec(LA^T U S V LB) = design vec(S)
        target = (LA.T @ W[i] @ LB).T.reshape(-1)
        best = torch.linalg.lstsq(design, target[:, None]).solution[:, 0].reshape(3, 4).T
        torch.testing.assert_close(S[i], best, rtol=1e-6, atol=1e-8)


def test_bank_weights_are_the_least_squares_solution_and_the_step_lowers_the_error(monkeypatch):
    monkeypatch.setattr(weighted, "CG_STEPS", 400)  # converged: the exact least-squares rows
    W, _, w = problem()
    n, R, C = W.shape
    U = torch.linalg.qr(torch.randn(R, 4, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(C, 3, dtype=torch.float64))[0].T
    P, core = torch.randn(n, 3, dtype=torch.float64), torch.randn(3, 4, 3, dtype=torch.float64)
    rows, cols = weighted._Moments(w.rows_index, w.rows_cov), weighted._Moments(w.cols_index, w.cols_cov)
    before = weighted_error(W, U @ torch.einsum("nl,lab->nab", P, core) @ V, w)
    core2, P2 = weighted._update_cores(W, rows, cols, U, V, core, P)
    after = weighted_error(W, U @ torch.einsum("nl,lab->nab", P2, core2) @ V, w)
    assert after < before
    for i in range(n):
        LA, LB = chol_sides(w, i, R, C)
        design = torch.stack([(LA.T @ U @ core2[k] @ V @ LB).reshape(-1) for k in range(3)], 1)
        best = torch.linalg.lstsq(design, (LA.T @ W[i] @ LB).reshape(-1, 1)).solution[:, 0]
        torch.testing.assert_close(P2[i], best, rtol=1e-5, atol=1e-7)


def test_whitened_svd_is_stationary_and_beats_the_plain_svd():
    W, _, w = problem()
    f = whitened_svd(W.float(), w, 4)
    W_hat = (f["U"] @ f["S"] @ f["V"]).double()
    Us, s, Vh = torch.linalg.svd(W)
    plain = Us[..., :4] @ torch.diag_embed(s[..., :4]) @ Vh[..., :4, :]
    assert weighted_error(W, W_hat, w) < 0.5 * weighted_error(W, plain, w)
    # first-order optimality: the gradient of F in both factors vanishes at the whitened solution
    A = (f["U"] @ f["S"]).double().requires_grad_()
    B = f["V"].double().requires_grad_()
    D = W - A @ B
    ROWS, COLS = sides(len(W))
    F = sum(torch.trace(D[i].T @ w.rows_cov[k] @ D[i]) for k, i in enumerate(ROWS)) + sum(
        torch.trace(D[i] @ w.cols_cov[k] @ D[i].T) for k, i in enumerate(COLS)
    )
    gA, gB = torch.autograd.grad(F, (A, B))
    assert gA.norm() < 1e-3 * F.item() and gB.norm() < 1e-3 * F.item()


def test_whitened_svd_at_full_rank_is_exact_and_a_singular_moment_after_damping_gives_finite_factors():
    W, X, w = problem(tokens=4)  # 4 tokens for widths of 10: every moment is singular
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(w.rows_cov)
    f = whitened_svd(W.float(), w.damped(0.01), 10)
    torch.testing.assert_close(f["U"] @ f["S"] @ f["V"], W.float(), rtol=1e-4, atol=1e-4)
    f = whitened_svd(W.float(), w.damped(0.01), 3)
    assert all(torch.isfinite(t).all() for t in f.values())


@pytest.mark.parametrize("method", ["shared", "tucker"])
def test_refine_lowers_the_calibrated_error_monotonically(method):
    W, _, w = problem(n=8, R=12, C=12, tokens=60)
    W32, w32 = W.float(), w.damped(0.0)
    extra = {"layer_rank": 4} if method == "tucker" else {}
    m = get_method(method, rank=5, tol=1e-7, max_iter=60, weighting="absolute", **extra)
    group = Group("12x12", 12, 12, 8)
    ranks = m.group_ranks(group, 12)
    start, _ = m.fit(W32, group, ranks)
    refined, record = m.fit_calibrated(W32, group, ranks, w32)
    errors = record["calibrated_errors"]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:]))
    before = weighted_error(W32, m.reconstruct(start), w32)
    after = weighted_error(W32, m.reconstruct(refined), w32)
    assert after < 0.8 * before
    assert errors[-1] == pytest.approx(after / weighted_error(W32, None, w32), rel=1e-4)
    assert set(refined) == set(start) and all(refined[k].shape == start[k].shape for k in start)


@pytest.mark.parametrize("method", ["shared", "tucker"])
def test_relative_weighting_minimises_the_sum_of_relative_output_errors(method):
    """weighting="relative" divides each slice's moment by its output energy f_i(0): the fit then
    lowers sum_i f_i / f_i(0) (computed here slice by slice from the raw moments), monotonically,
    and ends below the absolute fit on that objective."""
    W, X, w = problem(n=8, R=12, C=12, tokens=60)
    W32, w32 = W.float(), w.damped(0.0)
    rows = set(w.rows_index.tolist())

    def output(i, M):  # slice i's outputs on its own inputs
        return X[i] @ M.double() if i in rows else M.double() @ X[i].T

    def relative_objective(W_hat):
        return sum((output(i, W[i] - W_hat[i]).norm() / output(i, W[i]).norm()).item() ** 2 for i in range(8))

    scaled = relative_weights(W32, w32)
    assert weighted_error(W32, None, scaled) == pytest.approx(8.0, rel=1e-4)  # every f_i(0) is now 1

    extra = {"layer_rank": 4} if method == "tucker" else {}
    group = Group("12x12", 12, 12, 8)
    fits = {}
    for weighting in ("relative", "absolute"):
        m = get_method(method, rank=5, tol=1e-7, max_iter=60, weighting=weighting, **extra)
        ranks = m.group_ranks(group, 12)
        refined, record = m.fit_calibrated(W32, group, ranks, w32)
        fits[weighting] = relative_objective(m.reconstruct(refined))
        if weighting == "relative":
            errors = record["calibrated_errors"]
            assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:]))
            assert errors[-1] == pytest.approx(fits[weighting] / 8, rel=1e-4)
    assert fits["relative"] < fits["absolute"]


def test_refine_with_identity_moments_keeps_the_weight_only_optimum():
    """With every moment the identity F is the weight error, which HOOI already minimises."""
    W = torch.randn(6, 8, 8)
    eye = torch.eye(8).expand(3, 8, 8)
    w = SliceWeights(torch.tensor([0, 2, 4]), eye.clone(), torch.tensor([1, 3, 5]), eye.clone())
    core, (_, U, V), _ = tucker_hooi(W, (6, 4, 4), tol=1e-10, max_iter=500)
    start = weighted_error(W, U @ core @ V.T, w)
    out, _ = refine(W, w, {"U": U, "S": core, "V": V.T.contiguous()}, tol=1e-9, max_iter=5)
    assert weighted_error(W, out["U"] @ out["S"] @ out["V"], w) == pytest.approx(start, rel=1e-3)


def test_unique_moments_share_identical_moments():
    a, b = moment(inputs(5, 10, 1)), moment(inputs(5, 10, 2))
    distinct, inverse = unique_moments(torch.stack([a, a.clone(), b, a]))
    assert len(distinct) == 2 and inverse.tolist() == [0, 0, 1, 0]


def test_a_full_bank_fits_as_the_shared_method_does():
    """Tucker with l = n is shared's model with P = I; its data-aware fit is shared's (each core
    solved exactly), and it ends no worse than the bank refinement would."""
    W, _, w = problem(n=6, R=10, C=10, tokens=50)
    W32, w32 = W.float(), w.damped(0.0)
    group = Group("10x10", 10, 10, 6)
    tucker = get_method("tucker", rank=4, layer_rank=6, max_iter=20, tol=1e-8)
    shared = get_method("shared", rank=4, max_iter=20, tol=1e-8)
    ranks = tucker.group_ranks(group, 10)
    bank, _ = tucker.fit_calibrated(W32, group, ranks, w32)
    alone, _ = shared.fit_calibrated(W32, group, shared.group_ranks(group, 10), w32)
    torch.testing.assert_close(bank["P"], torch.eye(6))
    torch.testing.assert_close(tucker.reconstruct(bank), shared.reconstruct(alone), atol=1e-5, rtol=1e-4)
    refined, _ = Method.fit_calibrated(tucker, W32, group, ranks, w32)  # the bank's C and P refinement
    assert "P" in refined and not torch.allclose(refined["P"], torch.eye(6))
    assert weighted_error(W32, tucker.reconstruct(bank), w32) <= weighted_error(W32, tucker.reconstruct(refined), w32)


def test_cholesky_of_a_singular_moment_takes_the_smallest_jitter_that_works():
    """A rank-4 moment formed in float32 (as the large products are) is indefinite by rounding: a
    1e-10 relative jitter does not make it factor; the guard finds one that does, at most 1e-6 of its
    scale, and refuses a matrix with a NaN by name."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(64, 4, generator=g)
    M = (A @ A.T).double() * 1e3
    scale = M.diagonal().mean().item()
    assert torch.linalg.cholesky_ex(M + 1e-10 * scale * torch.eye(64, dtype=M.dtype))[1] != 0
    L = weighted._chol(M)
    torch.testing.assert_close(L @ L.T, M, rtol=0, atol=2e-6 * scale)
    with pytest.raises(TensorslimError, match="not positive semi-definite"):
        weighted._chol(torch.full((3, 3), float("nan"), dtype=torch.float64))
