"""Layer windows (Basis Sharing's grouping) and the output-full side policy: groups of consecutive
layers split by input side, factors of a whole output side never stored, the data-aware fit of one
slice equal to the whitened SVD, and students that save, load, merge and count like any other."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import tensorslim  # noqa: F401  (registers the loader with transformers)
from tensorslim.compress.api import decompose, export_dense
from tensorslim.compress.counts import matrix_weights
from tensorslim.compress.inplace import bank_of, layout, matrix_of
from tensorslim.decomposition.methods import METHODS, get_method
from tensorslim.decomposition.slice_weights import SliceWeights
from tensorslim.decomposition.slices import Group, assemble, stack
from tensorslim.decomposition.weighted import weighted_error
from tensorslim.errors import TensorslimError
from tiny_models import tiny_inputs, tiny_model

WINDOWED = {"layer_window": 2, "sides": "output-full"}


def llama(layers=5):
    return tiny_model("llama", "causal_lm", num_hidden_layers=layers)


def test_windows_split_groups_by_layers_and_input():
    """5 layers in windows of 2: layers 0-1, 2-3 and 4, each with groups of the slices that read one
    input: q; k and v (the attention input, [in, out], inputs on the rows); o; gate and up ([out, in],
    inputs on the columns); down. Stacking inverts."""
    model = llama()
    groups, layouts, found = layout(model, "all", 2)
    D, F, KV = 32, 80, 16
    expected = {}
    for first, last in ((0, 1), (2, 3), (4, 4)):
        k = last - first + 1
        expected[f"{D}x{D}_x_{first}-{last}"] = (D, D, k, "rows")
        expected[f"{D}x{KV}_x_{first}-{last}"] = (D, KV, 2 * k, "rows")
        expected[f"{D}x{D}_o_{first}-{last}"] = (D, D, k, "rows")
        expected[f"{F}x{D}_h_{first}-{last}"] = (F, D, 2 * k, "cols")
        expected[f"{F}x{D}_down_{first}-{last}"] = (F, D, k, "rows")
    assert {n: (g.rows, g.cols, g.num_slices, g.inputs) for n, g in groups.items()} == expected
    for lay in layouts:  # every module's slices lie in the window of its layer
        first = int(lay.key.split(".")[0]) // 2 * 2
        assert all(b.group.endswith(f"_{first}-{min(first + 1, 4)}") for b in lay.blocks)
    matrices = {key: matrix_of(module) for key, module, _ in found}
    stacks = stack(matrices, groups, layouts)
    for lay in layouts:
        torch.testing.assert_close(assemble(stacks, lay), matrices[lay.key].detach(), atol=0, rtol=0)
    assert layout(model, "all")[0]["32x32"].inputs == "rows"  # q and o: one side without a window too
    assert layout(model, "all")[0]["80x32"].inputs is None  # gate, up and down mix both


def test_private_parts_are_grouped_per_layer(tmp_path):
    """--private-parts o,down (Basis Sharing's private part): o and down get one group per layer, the
    other slices keep their windows; the same with every layer in one group (window 0). Stacking
    inverts and the student reloads with the same groups."""
    model = llama()
    groups = layout(model, "all", 2, ("o", "down"))[0]
    D, F = 32, 80
    for layer in range(5):
        assert groups[f"{D}x{D}_o_{layer}-{layer}"].num_slices == 1
        assert groups[f"{F}x{D}_down_{layer}-{layer}"].num_slices == 1
    assert groups[f"{D}x{D}_x_0-1"].num_slices == 2 and groups[f"{F}x{D}_h_2-3"].num_slices == 4
    assert not any("_o_0-1" in n or "_down_2-3" in n for n in groups)
    everywhere = layout(model, "all", None, ("o", "down"))[0]
    assert everywhere["32x32"].num_slices == 5  # the q of every layer; each o on its own
    assert everywhere["80x32"].num_slices == 10 and everywhere["80x32"].inputs == "cols"  # gate and up
    assert everywhere[f"{D}x{D}_o_3-3"].num_slices == 1
    student, _ = decompose(llama(), "shared", rank=8, private_parts="o,down", **WINDOWED)
    assert set(bank_of(student).groups) == set(groups)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert set(bank_of(loaded).groups) == set(groups)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs()).logits, student(**tiny_inputs()).logits, atol=0, rtol=0)
    with pytest.raises(TensorslimError, match="--private-parts names ffn_out, not a part"):
        decompose(llama(), "shared", rank=8, private_parts="o,ffn_out", **WINDOWED)


def test_causal_lms_share_across_two_layers_below_40_percent_and_within_one_from_it():
    """The decoder default (kind_defaults): windows of 2 layers while less than WITHIN_LAYER_FROM of the
    weights is removed, of 1 layer from it on (a budget counts by the share it removes); an explicit
    window wins; encoders keep the paper's one group for all layers."""
    for compression, window in ((0.2, 2), (0.39, 2), (0.4, 1), (0.6, 1)):
        _, record = decompose(llama(), "shared", compression=compression, max_iter=1)
        assert record["options"]["layer_window"] == window, compression
        assert record["options"]["sides"] == "output-full"
    dense = matrix_weights(llama())
    _, by_budget = decompose(llama(), "shared", budget=int(dense * 0.5), max_iter=1)
    assert by_budget["options"]["layer_window"] == 1
    _, explicit = decompose(llama(), "shared", compression=0.5, layer_window=2, max_iter=1)
    assert explicit["options"]["layer_window"] == 2
    _, unset = decompose(llama(), "shared", rank=8, max_iter=1)  # no budget: the wider window
    assert unset["options"]["layer_window"] == 2
    _, encoder = decompose(tiny_model("bert"), "shared", compression=0.5, max_iter=1)
    assert encoder["options"]["layer_window"] == 0


def test_bad_windows_and_sides_are_refused():
    with pytest.raises(TensorslimError, match="layer window 6 is out of range for a model of 5 layers"):
        decompose(llama(), "tucker", rank=8, layer_window=6)
    with pytest.raises(TensorslimError, match="must be a whole number"):
        get_method("shared", layer_window=1.5)
    with pytest.raises(TensorslimError, match="group 80x32 mixes"):  # gate/up and down in one group
        decompose(llama(), "shared", rank=8, sides="output-full", layer_window=0)  # 0: the paper's groups
    with pytest.raises(TensorslimError, match="has no option"):  # per-matrix methods share nothing
        METHODS["lowrank"](layer_window=2)


@pytest.mark.parametrize("method,options", [("shared", {"rank": 8}), ("tucker", {"rank": 8, "layer_rank": 2})])
def test_a_whole_output_side_is_not_stored_and_the_student_is_its_reconstruction(tmp_path, method, options):
    """No V for groups read on the rows, no U for those read on the columns; the counts are the bank's
    parameters; the student equals its dense export and reloads identically through transformers."""
    student, record = decompose(llama(), method, **options, **WINDOWED)
    bank = bank_of(student)
    for name, group in bank.groups.items():
        stored = dict(group.named_parameters())
        inputs_on_columns = "_h_" in name  # gate and up, [out, in]
        assert ("V" if inputs_on_columns else "U") in stored
        assert ("U" if inputs_on_columns else "V") not in stored
    assert record["decomposed_weights"]["student"] == sum(p.numel() for p in bank.parameters())
    assert matrix_weights(student) == record["decomposed_weights"]["student"]
    inputs = tiny_inputs()
    with torch.no_grad():
        ours = student(**inputs).logits
        torch.testing.assert_close(export_dense(student)(**inputs).logits, ours, atol=1e-5, rtol=1e-4)
        student.save_pretrained(tmp_path)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
        torch.testing.assert_close(loaded(**inputs).logits, ours, atol=0, rtol=0)
    assert loaded.config.quantization_config.options["layer_window"] == 2


def test_full_rank_output_full_student_is_the_teacher():
    teacher = llama()
    student, record = decompose(llama(), "tucker", rank=32, layer_rank=4, **WINDOWED)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(student(**inputs).logits, teacher(**inputs).logits, atol=1e-4, rtol=1e-4)
    assert record["relative_error"] < 1e-5


@pytest.mark.parametrize("inputs", ["rows", "cols"])
def test_the_data_aware_fit_of_one_slice_is_the_whitened_svd(inputs):
    """A group of one slice with its output side whole: the best input basis of rank r is the
    whitened truncated SVD, computed here independently (Cholesky, SVD, least squares)."""
    g = torch.Generator().manual_seed(0)
    R, C, r = (24, 10, 6) if inputs == "rows" else (10, 24, 6)
    W = torch.randn(1, R, C, generator=g, dtype=torch.float64).float()
    m = R if inputs == "rows" else C
    X = torch.randn(200, m, generator=g, dtype=torch.float64) * torch.logspace(0, 2, m, dtype=torch.float64)
    cov = (X.T @ X / 200)[None]
    empty = torch.zeros(0, dtype=torch.long)
    on_rows = inputs == "rows"
    weights = SliceWeights(
        torch.tensor([0]) if on_rows else empty,
        cov.float() if on_rows else torch.zeros(0, R, R),
        empty if on_rows else torch.tensor([0]),
        torch.zeros(0, C, C) if on_rows else cov.float(),
    )
    group = Group("g", R, C, 1, inputs)
    method = get_method("shared", sides="output-full", max_iter=20)
    ranks = {"rank": min(R, C), "sides": [r, C] if on_rows else [R, r]}
    factors, _ = method.fit_calibrated(W, group, ranks, weights)
    fitted = method.reconstruct(method.finish(group, factors))
    # reference: y = x W (rows) or y = x W^T (columns); best rank-r map in the metric of the inputs
    A = W[0].double() if on_rows else W[0].double().T  # (in, out)
    L = torch.linalg.cholesky(cov[0])
    U, s, Vh = torch.linalg.svd(L.T @ A, full_matrices=False)
    best = torch.linalg.solve_triangular(L.T, U[:, :r] * s[:r] @ Vh[:r], upper=True)
    best = best if on_rows else best.T
    ours = weighted_error(W, fitted, weights)
    reference = weighted_error(W, best[None].float(), weights)
    assert ours == pytest.approx(reference, rel=1e-3)
    assert set(method.finish(group, factors)) == ({"U", "S"} if on_rows else {"S", "V"})


@pytest.mark.parametrize(
    "method,options", [("tucker", {"rank": 8, "layer_rank": 2, **WINDOWED}), ("lowrank", {"rank": 8})]
)
def test_products_kept_for_inference_are_laid_out_for_decoding_and_factors_never_copied(method, options):
    """Without gradients the products of factors the projections multiply by are kept with their longer
    dimension contiguous (`laid_out`); the input sides are the factors themselves (gate and up read
    their transposed slices in place), with or without gradients; same outputs."""
    student, _ = decompose(llama(), method, **options)
    bank, inputs = bank_of(student), tiny_inputs()
    storages = {p.untyped_storage().data_ptr() for p in bank.parameters()}

    def kept() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        entries = [v for v in bank._memo.values() if isinstance(v, tuple) and isinstance(v[0], str)]
        return [A for _, A, _ in entries], [W for _, _, then in entries for W in then]

    trained = student(**inputs).logits
    sides, products = kept()
    assert sides and all(A.untyped_storage().data_ptr() in storages for A in sides)
    assert any(not A.is_contiguous() for A in sides)  # gate and up: transposed views of their factor
    with torch.no_grad():
        served = student(**inputs).logits
    sides, products = kept()
    assert sides and all(A.untyped_storage().data_ptr() in storages for A in sides)
    assert products and all(W.stride(0 if W.shape[0] > W.shape[1] else 1) == 1 for W in products)
    assert all(W.is_contiguous() or W.mT.is_contiguous() for W in products)
    torch.testing.assert_close(served, trained.detach(), atol=1e-5, rtol=1e-5)
