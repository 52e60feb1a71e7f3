"""Allocation by error: each group's rank chosen on the spectra of its stack so that the budget goes
where it removes the most error per weight (decomposition.allocation), checked against an exhaustive
search, against the one-share rule on a real decomposition, and through save and load."""

from itertools import product

import pytest
import torch
from transformers import AutoModelForCausalLM

import tensorslim  # noqa: F401  (registers the loader with transformers)
from tensorslim.cli import build_parser
from tensorslim.compress.api import check_settings, decompose
from tensorslim.compress.calibration import calibrate, calibration_data
from tensorslim.compress.inplace import bank_of
from tensorslim.decomposition.allocation import Spectra, allocate_by_error, tails
from tensorslim.decomposition.methods import get_method
from tensorslim.decomposition.slice_weights import SliceWeights
from tensorslim.decomposition.slices import Group
from tensorslim.decomposition.weighted import slicewise_whitened, weighted_error
from test_calibrated_decompose import text_file
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer


def stack_with_spectrum(n: int, R: int, C: int, values: list[list[float]], seed: int) -> torch.Tensor:
    """(n, R, C) slices U_i diag(values[i]) V_i^T with random orthonormal U_i, V_i."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in values:
        U = torch.linalg.qr(torch.randn(R, R, generator=g, dtype=torch.float64))[0][:, : len(s)]
        V = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))[0][:, : len(s)]
        out.append(U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T)
    return torch.stack(out)


def truncation_error(W: torch.Tensor, r: int) -> float:
    """sum_i ||W_i - (W_i)_r||^2 of every slice's rank-r truncated SVD (independent of the module)."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return float(((W - U[..., :r] @ torch.diag_embed(s[..., :r]) @ Vh[..., :r, :]) ** 2).sum())


def test_tails_are_the_energy_beyond_each_rank():
    e = torch.tensor([[5.0, 3.0, 1.0], [2.0, 2.0, 0.0]])
    assert tails(e).tolist() == [[9.0, 4.0, 1.0, 0.0], [4.0, 2.0, 0.0, 0.0]]


def test_a_hand_derived_case_goes_to_the_flat_spectrum():
    """Two groups of one 8 x 8 slice, svd (8 + 8 = 16 weights per rank): A's energy is one direction,
    B's four equal ones. From rank 1 each, the next ranks remove 9 per step in B, 1 in A: with room
    for six ranks in all, B gets 4 and A 2."""
    groups = {"A": Group("A", 8, 8, 1), "B": Group("B", 8, 8, 1)}
    stacks = {
        "A": stack_with_spectrum(1, 8, 8, [[10, 1, 1, 1, 1, 1, 1, 1]], seed=0),
        "B": stack_with_spectrum(1, 8, 8, [[3, 3, 3, 3]], seed=1),
    }
    chosen = allocate_by_error(get_method("svd"), groups, 6 * 16, Spectra(stacks))
    assert chosen == {"A": 2, "B": 4}


def test_the_greedy_choice_is_the_exhaustive_optimum_for_equal_step_costs():
    """svd groups of one shape (every rank step costs the same): the greedy ranks reach the smallest
    total truncation error over every rank combination within the budget whose groups hold no more
    weights than dense (rank 7 of 12 here: 2 (20 + 12) 7 <= 2 x 20 x 12)."""
    groups = {name: Group(name, 20, 12, 2) for name in "abc"}
    g = torch.Generator().manual_seed(4)
    stacks = {name: torch.randn(2, 20, 12, generator=g, dtype=torch.float64) * scale
              for name, scale in zip("abc", (1.0, 0.3, 2.0))}  # fmt: skip
    method, step = get_method("svd"), 2 * (20 + 12)
    for budget in (5 * step, 9 * step + 7, 14 * step, 30 * step):
        chosen = allocate_by_error(method, groups, budget, Spectra(stacks))
        assert sum(step * r for r in chosen.values()) <= budget and max(chosen.values()) <= 7
        best = min(
            sum(truncation_error(stacks[n], r) for n, r in zip("abc", ranks))
            for ranks in product(range(1, 8), repeat=3)
            if step * sum(ranks) <= budget
        )
        assert sum(truncation_error(stacks[n], chosen[n]) for n in "abc") == pytest.approx(best, rel=1e-9)


def test_a_budget_below_rank_one_everywhere_is_refused():
    groups = {"a": Group("a", 10, 6, 2)}
    spectra = Spectra({"a": torch.randn(2, 10, 6)})
    assert allocate_by_error(get_method("svd"), groups, 10, spectra) is None
    with pytest.raises(tensorslim.errors.TensorslimError, match="no svd rank setting fits in 10"):
        get_method("svd", allocation="error").for_budget(groups, 6, 10, stacks=spectra)


@pytest.mark.parametrize("method", ["svd", "lowrank"])
def test_error_allocation_fits_the_weights_better_than_one_share(method):
    """Weight-only per-matrix fits on a tiny decoder whose groups differ in shape: allocation by
    error spends no more weights than one share for every group and leaves less weight error."""
    by_share, share = decompose(tiny_model("llama"), method, compression=0.5, allocation="ratio")
    by_error, error = decompose(tiny_model("llama"), method, compression=0.5, allocation="error")
    ranks = error["options"]["group_ranks"]
    assert set(ranks) == set(error["groups"]) and len(set(ranks.values())) > 1
    assert error["decomposed_weights"]["student"] <= error["decomposed_weights"]["teacher"] * 0.5
    assert error["relative_error"] < share["relative_error"]


def test_a_student_with_group_ranks_saves_checks_and_reloads(tmp_path):
    student, record = decompose(tiny_model("llama", "causal_lm"), "tucker", compression=0.4, allocation="error",
                                max_iter=2)  # fmt: skip
    ranks = record["options"]["group_ranks"]
    assert {n: g["ranks"]["rank"] for n, g in record["groups"].items()} == ranks
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert {n: g["ranks"]["rank"] for n, g in loaded.config.quantization_config.groups.items()} == ranks
    assert set(bank_of(loaded).groups) == set(ranks)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs()).logits, student(**tiny_inputs()).logits, atol=0, rtol=0)
    # before any weight is read, the settings check takes the option (one share stands in for the spectra)
    assert check_settings(student.config, "tucker", compression=0.4, allocation="error").allocation == "error"
    args = build_parser().parse_args(["decompose", "--teacher", "t", "--out", "o", "--allocation", "error"])
    assert args.allocation == "error"


def test_slicewise_whitening_gives_each_slice_its_output_energy():
    """||L_i^T W_i||^2 (or ||W_i L_i||^2) is f_i(0), the slice's output energy on its own moment."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    covs = [(lambda A: A @ A.T)(torch.randn(6, 6, generator=g, dtype=torch.float64)) for _ in range(4)]
    weights = SliceWeights(torch.tensor([0, 2]), torch.stack([covs[0], covs[2]]),
                           torch.tensor([1, 3]), torch.stack([covs[1], covs[3]]))  # fmt: skip
    Ww = slicewise_whitened(W, weights)
    for i in range(4):
        rows = i in (0, 2)
        one = SliceWeights(
            torch.tensor([0] if rows else []).long(),
            covs[i][None] if rows else torch.zeros(0, 6, 6, dtype=torch.float64),
            torch.tensor([] if rows else [0]).long(),
            torch.zeros(0, 6, 6, dtype=torch.float64) if rows else covs[i][None],
        )
        assert float((Ww[i] ** 2).sum()) == pytest.approx(weighted_error(W[i : i + 1], None, one), rel=1e-9)


def test_with_calibration_the_allocation_follows_the_fits_weighting(tmp_path):
    """Data-aware, the curves are in the units of the fit's objective: relative and Fisher weighting
    of the same moments spread one budget differently, each within it."""
    teacher = tiny_model("llama", "causal_lm")
    data = calibration_data(teacher.config, text_file(tmp_path / "t.txt"), tiny_tokenizer(), samples=16,
                            seq_length=32, seed=0)  # fmt: skip
    calibration = calibrate(teacher, data, ops="all", fisher=True)
    ranks = {}
    for weighting in ("relative", "fisher"):
        _, record = decompose(tiny_model("llama", "causal_lm"), "tucker", compression=0.5, allocation="error",
                              weighting=weighting, max_iter=2, calibration=calibration)  # fmt: skip
        assert record["decomposed_weights"]["student"] <= record["decomposed_weights"]["teacher"] * 0.5
        ranks[weighting] = record["options"]["group_ranks"]
    assert ranks["relative"].keys() == ranks["fisher"].keys() and ranks["relative"] != ranks["fisher"]
