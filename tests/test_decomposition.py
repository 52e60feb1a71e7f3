"""Decomposition math: slicing and orientation, the three methods, HOSVD + HOOI against tensorly, budgets."""

import pytest
import tensorly as tl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import partial_tucker
from transformers import BertConfig, BertModel

from tensorslim.compress.inplace import layout, matrix_of
from tensorslim.decomposition.hooi import sweep_dtype, tucker_hooi
from tensorslim.decomposition.methods import METHODS, get_method
from tensorslim.decomposition.methods.base import SIDES
from tensorslim.decomposition.slices import Group, assemble, stack
from tensorslim.errors import TensorslimError
from tiny_models import tiny_model


def tiny_bert(hidden=16, layers=2, ffn_mult=4, seed=0):
    torch.manual_seed(seed)
    return BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=ffn_mult * hidden,
            max_position_embeddings=32,
        )
    ).eval()


def stacks_of(model, ops="all"):
    groups, layouts, found = layout(model, ops)
    return groups, stack({key: matrix_of(m) for key, m, _ in found}, groups, layouts), layouts


def bert_stack(model, ops="all"):
    groups, stacks, _ = stacks_of(model, ops)
    assert len(stacks) == 1
    return next(iter(stacks.values()))


def tucker_to_tensor(core, factors):
    return torch.einsum("lab,nl,Da,Eb->nDE", core, *factors)


@pytest.mark.parametrize("ops,count", [("all", 12), ("san", 4), ("ffn", 8)])
def test_bert_stack_is_the_papers(ops, count):
    """One group of n = L x slots D x D slices, in the paper's order and orientation."""
    model = tiny_bert()
    W = bert_stack(model, ops)
    assert W.shape == (2 * count, 16, 16)
    layer1 = model.encoder.layer[1]
    expected = {
        "all": layer1.attention.self.query.weight.T,
        "san": layer1.attention.self.query.weight.T,
        "ffn": layer1.intermediate.dense.weight[:16],
    }[ops]
    torch.testing.assert_close(W[count], expected)


def test_bert_slices_act_like_the_dense_layers():
    """x @ M (or x @ M.T for [out, in] slices) reproduces each nn.Linear block's output: q, k, v, o,
    ffn_in.0-3 ([out, in] row blocks of intermediate.dense), ffn_out.0-3 ([in, out] column blocks)."""
    model = tiny_bert()
    layer = model.encoder.layer[0]
    x = torch.randn(5, 16)
    W = bert_stack(model)[:12]
    torch.testing.assert_close(x @ W[0], x @ layer.attention.self.query.weight.T)
    torch.testing.assert_close(x @ W[2], x @ layer.attention.self.value.weight.T)
    ffn_in = torch.cat([x @ W[4 + j].T for j in range(4)], dim=-1)
    torch.testing.assert_close(ffn_in, x @ layer.intermediate.dense.weight.T)
    z = torch.randn(5, 64)
    ffn_out = sum(z[:, 16 * j : 16 * (j + 1)] @ W[8 + j] for j in range(4))
    torch.testing.assert_close(ffn_out, z @ layer.output.dense.weight.T)


def test_decoder_groups_by_shape_with_the_ffn_side_first():
    """Llama (hidden 32, 2 K/V heads of 8, FFN 80): q and o are 32 x 32 slices, k and v 32 x 16, and
    gate, up ([out, in]) and down ([in, out]) 80 x 32 slices with the FFN side first; whole, since
    80 is not a multiple of 32."""
    model = tiny_model("llama")
    groups, stacks, layouts = stacks_of(model)
    assert {n: (g.rows, g.cols, g.num_slices) for n, g in groups.items()} == {
        "32x32": (32, 32, 4),
        "32x16": (32, 16, 4),
        "80x32": (80, 32, 6),
    }
    layer = model.layers[1]
    torch.testing.assert_close(stacks["32x32"][2], layer.self_attn.q_proj.weight.T)
    torch.testing.assert_close(stacks["32x32"][3], layer.self_attn.o_proj.weight.T)
    torch.testing.assert_close(stacks["32x16"][3], layer.self_attn.v_proj.weight.T)
    torch.testing.assert_close(stacks["80x32"][3], layer.mlp.gate_proj.weight)
    torch.testing.assert_close(stacks["80x32"][4], layer.mlp.up_proj.weight)
    torch.testing.assert_close(stacks["80x32"][5], layer.mlp.down_proj.weight.T)
    for lay in layouts:  # assemble is the inverse of stack
        module = model.get_submodule("layers." + lay.key)
        torch.testing.assert_close(assemble(stacks, lay), matrix_of(module))


def test_gpt2_fused_attention_splits_into_q_k_v_slices():
    model = tiny_model("gpt2")
    groups, stacks, layouts = stacks_of(model)
    assert list(groups) == ["32x32"] and groups["32x32"].num_slices == 2 * (3 + 1 + 4 + 4)
    c_attn = model.h[0].attn.c_attn.weight  # Conv1D: [in, out] = [32, 96]
    for j in range(3):
        torch.testing.assert_close(stacks["32x32"][j], c_attn[:, 32 * j : 32 * (j + 1)])
    c_fc = model.h[0].mlp.c_fc.weight  # [32, 128]: FFN input, sliced [out, in]
    torch.testing.assert_close(stacks["32x32"][4], c_fc[:, :32].T)


@pytest.mark.parametrize("name", list(METHODS))
def test_full_rank_is_exact(name):
    W = bert_stack(tiny_bert())
    group = Group("16x16", 16, 16, 24)
    method = get_method(name, rank=16, layer_rank=24)
    ranks = method.group_ranks(group, 16)
    factors, _ = method.fit(W, group, ranks)
    torch.testing.assert_close(method.reconstruct(factors), W, atol=1e-5, rtol=1e-4)
    assert all(factors[k].abs().sum() > 0 for k in factors)  # never zero factors


def test_a_rank_at_the_smaller_side_keeps_a_rectangular_group_exact():
    torch.manual_seed(0)
    W = torch.randn(6, 20, 8)
    group = Group("20x8", 20, 8, 6)
    for name in METHODS:
        method = get_method(name, rank=8, layer_rank=6)
        ranks = method.group_ranks(group, 8)
        factors, _ = method.fit(W, group, ranks)
        torch.testing.assert_close(method.reconstruct(factors), W, atol=1e-4, rtol=1e-4)


def test_ranks_scale_with_a_groups_smaller_side():
    method = get_method("tucker", rank=288)  # d = D / 2 for SmolLM2 (D = 576)
    assert method.group_ranks(Group("576x576", 576, 576, 60), 576) == {
        "rank": 288,
        "sides": [288, 288],
        "layer_rank": 30,
    }
    assert method.group_ranks(Group("576x192", 576, 192, 60), 576) == {"rank": 96, "sides": [288, 96], "layer_rank": 30}
    assert method.group_ranks(Group("1536x576", 1536, 576, 90), 576) == {
        "rank": 288,
        "sides": [768, 288],
        "layer_rank": 45,
    }


@pytest.mark.parametrize("name,rank,layer_rank", [("lowrank", 6, None), ("shared", 6, None), ("tucker", 6, 10)])
def test_parameter_counts_match_the_paper_formulas(name, rank, layer_rank):
    n, D, d, l = 24, 16, rank, layer_rank
    expected = {
        "lowrank": n * (2 * D * d + d * d),
        "shared": 2 * D * d + n * d * d,
        "tucker": 2 * D * d + n * (l or 0) + (l or 0) * d * d,
    }[name]
    method = get_method(name, rank=rank, layer_rank=layer_rank)
    group = Group("16x16", D, D, n)
    ranks = method.group_ranks(group, D)
    assert method.num_params(group, ranks) == expected
    factors, _ = method.fit(bert_stack(tiny_bert()), group, ranks)
    assert sum(t.numel() for t in factors.values()) == expected


def test_paper_table_for_bert_base():
    """docs/method.md, section 2: IV 72-384 holds 11,217,024 weights of BERT-base's 84,934,656."""
    group = Group("768x768", 768, 768, 144)

    def count(name, **values):
        method = get_method(name, **values)
        return method.num_params(group, method.group_ranks(group, 768))

    assert count("tucker", rank=384, layer_rank=72) == 11_217_024
    assert round(144 * 768 * 768 / count("tucker", rank=256, layer_rank=36), 1) == 30.8
    assert round(count("shared", rank=384) / 1e6, 1) == 21.8


def test_lowrank_is_the_truncated_svd():
    W = bert_stack(tiny_bert())
    method = get_method("lowrank", rank=5)
    group = Group("16x16", 16, 16, 24)
    factors, _ = method.fit(W, group, method.group_ranks(group, 16))
    R = method.reconstruct(factors)
    s = torch.linalg.svdvals(W.double())
    optimal = s[:, 5:].pow(2).sum(-1).sqrt()  # Eckart-Young
    torch.testing.assert_close(torch.linalg.matrix_norm((W - R).double()), optimal, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("ranks", [(10, 6, 6), (24, 8, 8), (5, 16, 4), (10, 6, 16)])
def test_hooi_matches_tensorly(ranks, precision):
    tl.set_backend("pytorch")
    W = bert_stack(tiny_bert(seed=1))
    core, factors, info = tucker_hooi(W, ranks, tol=1e-6, precision=precision)
    ours = ((W - tucker_to_tensor(core, factors)).norm() / W.norm()).item()
    (tl_core, tl_factors), _ = partial_tucker(W, rank=list(ranks), modes=[0, 1, 2], n_iter_max=100, tol=1e-6)
    theirs = ((W - tl.tucker_to_tensor((tl_core, tl_factors))).norm() / W.norm()).item()
    assert ours <= theirs + 1e-4
    assert info.errors[-1] == pytest.approx(ours, abs=1e-5)
    for A in factors:
        torch.testing.assert_close(A.T @ A, torch.eye(A.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(core, torch.einsum("nDE,nl,Da,Eb->lab", W, *factors), atol=1e-5, rtol=1e-4)


def test_hooi_is_deterministic_and_monotone():
    W = bert_stack(tiny_bert(seed=2))
    a = tucker_hooi(W, (8, 6, 6), tol=1e-7, precision="float32")
    b = tucker_hooi(W, (8, 6, 6), tol=1e-7, precision="float32")
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    errors = a[2].errors
    assert all(e1 >= e2 - 1e-9 for e1, e2 in zip(errors, errors[1:]))


def test_bfloat16_sweeps_finish_like_float32():
    """bfloat16 sweeps, then float32 ones: float32 orthonormal factors, the core is W's projection,
    and the error is no worse than the float32 run's by 1e-5."""
    W = bert_stack(tiny_bert(hidden=32, seed=3))  # (24, 32, 32)
    runs = {p: tucker_hooi(W, (12, 16, 16), precision=p) for p in ("float32", "bfloat16")}
    errors = {}
    for p, (core, factors, info) in runs.items():
        assert core.dtype == torch.float32 and all(A.dtype == torch.float32 for A in factors)
        for A in factors:
            torch.testing.assert_close(A.T @ A, torch.eye(A.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(core, torch.einsum("nDE,nl,Da,Eb->lab", W, *factors), atol=1e-5, rtol=1e-4)
        errors[p] = ((W - tucker_to_tensor(core, factors)).double().norm() / W.double().norm()).item()
        assert info.errors[-1] == pytest.approx(errors[p], abs=1e-6)
    assert errors["bfloat16"] <= errors["float32"] + 1e-5
    assert not torch.equal(runs["bfloat16"][0], runs["float32"][0])  # the bfloat16 path did run


def test_bfloat16_sweeps_and_their_float32_finish_count_against_max_iter():
    W = bert_stack(tiny_bert(seed=4))
    assert tucker_hooi(W, (8, 6, 6), tol=1.0, precision="float32")[2].sweeps == 2  # converged at the 2nd
    assert tucker_hooi(W, (8, 6, 6), tol=1.0, precision="bfloat16")[2].sweeps == 4  # 3 bfloat16 + 1 float32
    for max_iter in (1, 2, 3):
        assert tucker_hooi(W, (8, 6, 6), tol=0.0, max_iter=max_iter, precision="bfloat16")[2].sweeps == max_iter


def test_auto_precision_uses_bfloat16_for_large_tensors_where_the_cpu_multiplies_it_natively(monkeypatch):
    cpu, large = torch.device("cpu"), 1 << 22
    for amx, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda amx=amx: {"amx_bf16": amx})
        assert sweep_dtype("auto", cpu, large) == dtype
        assert sweep_dtype("auto", cpu, large - 1) == torch.float32
        assert sweep_dtype("float32", cpu, large) == torch.float32 and sweep_dtype("bfloat16", cpu, 1) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be 'auto', 'float32' or 'bfloat16', got 'fp16'"):
        sweep_dtype("fp16", cpu, large)


def test_bad_ranks_and_names():
    with pytest.raises(TensorslimError, match="unknown decomposition method 'cp'"):
        get_method("cp", rank=8)
    groups = {"16x16": Group("16x16", 16, 16, 24)}
    for rank in (0, -1, 17):
        with pytest.raises(TensorslimError, match="out of range"):
            get_method("shared", rank=rank).validate(groups, 16)
    for layer_rank in (0, 25):
        with pytest.raises(TensorslimError, match="layer rank"):
            get_method("tucker", rank=8, layer_rank=layer_rank).validate(groups, 16)
    with pytest.raises(TensorslimError, match="rank must be a whole number|whole number"):
        get_method("tucker", rank=8.5)
    with pytest.raises(TensorslimError, match="unknown ops"):
        layout(tiny_bert(), "attention")


def test_ranks_for_budget():
    groups, D = {"768x768": Group("768x768", 768, 768, 144)}, 768
    method = get_method("tucker").for_budget(groups, D, 2_000_000)
    assert method.layer_rank is None and method.total_params(groups, D) <= 2_000_000
    assert method.with_values(rank=method.rank + 1).total_params(groups, D) > 2_000_000
    assert method.group_ranks(groups["768x768"], D)["layer_rank"] == 72
    fixed = get_method("tucker", rank=384).for_budget(groups, D, 11_217_024)
    assert (fixed.rank, fixed.layer_rank) == (384, 72)
    shared = get_method("shared").for_budget(groups, D, 1_000_000)
    assert (
        shared.total_params(groups, D) <= 1_000_000 < shared.with_values(rank=shared.rank + 1).total_params(groups, D)
    )
    with pytest.raises(TensorslimError, match="no lowrank rank setting fits in 100"):
        get_method("lowrank").for_budget(groups, D, 100)


def test_budget_across_the_groups_of_a_decoder():
    groups = layout(tiny_model("llama"))[0]
    method = get_method("lowrank").for_budget(groups, 32, 3000)
    assert method.total_params(groups, 32) <= 3000 < method.with_values(rank=method.rank + 1).total_params(groups, 32)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), D=st.integers(2, 12), data=st.data())
def test_tucker_property(n, D, data):
    """Random shapes and ranks: orthonormal factors, error equals the formula, full rank exact."""
    torch.manual_seed(n * 100 + D)
    W = torch.randn(n, D, D)
    l, d = data.draw(st.integers(1, n)), data.draw(st.integers(1, D))
    core, factors, info = tucker_hooi(
        W, (l, d, d), max_iter=5, precision=data.draw(st.sampled_from(["float32", "bfloat16"]))
    )
    err = ((W - tucker_to_tensor(core, factors)).norm() / W.norm()).item()
    assert info.errors[-1] == pytest.approx(err, abs=1e-4)
    core, factors, _ = tucker_hooi(W, (n, D, D))
    torch.testing.assert_close(tucker_to_tensor(core, factors), W, atol=1e-5, rtol=1e-5)
    method = get_method("tucker", rank=d, layer_rank=l, max_iter=2)
    group = Group(f"{D}x{D}", D, D, n)
    ranks = method.group_ranks(group, D)
    assert sum(t.numel() for t in method.fit(W, group, ranks)[0].values()) == method.num_params(group, ranks)


def test_a_loose_tucker_budget_keeps_the_full_rank_and_grows_the_bank():
    """20% of BERT-base's stack removed: l = n/2 alone already removes half, so the search keeps d = D
    and takes the largest bank that fits."""
    groups, D = {"768x768": Group("768x768", 768, 768, 144)}, 768
    budget = int(0.8 * 144 * 768 * 768)
    method = get_method("tucker").for_budget(groups, D, budget)
    assert method.rank == D and method.total_params(groups, D) <= budget
    assert method.with_values(layer_rank=method.layer_rank + 1).total_params(groups, D) > budget


def test_tucker_budget_spends_on_the_mode_the_stack_needs():
    """With the stacks known, the budget goes to a small bank when the slices are few matrices mixed,
    and to a full bank when they are independent but low-rank: the smaller HOSVD bound each time."""
    from tensorslim.decomposition.hooi import unfolding_energies
    from tensorslim.decomposition.slices import Group

    g = torch.Generator().manual_seed(0)
    n, D = 16, 24
    group = {"24x24": Group("24x24", D, D, n)}
    budget = n * D * D // 3
    mixed = torch.einsum("nl,lab->nab", torch.randn(n, 4, generator=g), torch.randn(4, D, D, generator=g))
    low = torch.randn(n, D, 6, generator=g) @ torch.randn(n, 6, D, generator=g)
    method = get_method("tucker")
    for W, expect_small_bank in ((mixed, True), (low, False)):
        chosen = method.for_budget(group, D, budget, stacks={"24x24": W})
        ranks = chosen.group_ranks(group["24x24"], D)
        assert chosen.total_params(group, D) <= budget
        assert (ranks["layer_rank"] <= n // 4) == expect_small_bank, ranks
        others = [get_method("tucker", layer_rank=lr).for_budget(group, D, budget) for lr in (4, 8, 12, 16)]
        energies = {"24x24": unfolding_energies(W)}
        bounds = [o.error_bound(group, D, energies) for o in others]
        assert chosen.error_bound(group, D, energies) <= min(bounds) + 1e-6


def test_rectangular_sides_scale_or_stay_whole():
    """A 48 x 12 group at d = 4 of D = 12: proportional sides (16, 4); longer-full keeps the 48 rows,
    shorter-full the 12 columns, output-full the side the inputs are not on (and stores no factor for
    it); students saved before `sides` existed read `rank` on both sides."""
    D = 12
    for inputs, output_full, omitted in (("rows", [16, 12], "V"), ("cols", [48, 4], "U")):
        group = Group("48x12", 48, 12, 5, inputs)
        sides = {p: get_method("shared", rank=4, sides=p).group_ranks(group, D)["sides"] for p in SIDES.choices}
        assert sides == {
            "proportional": [16, 4],
            "longer-full": [48, 4],
            "shorter-full": [16, 12],
            "output-full": output_full,
        }
        method = get_method("tucker", rank=4, sides="output-full")
        shapes = method.shapes(group, method.group_ranks(group, D))
        assert omitted not in shapes and set(shapes) == {"U", "P", "C", "V"} - {omitted}
    with pytest.raises(TensorslimError, match="mixes"):
        get_method("shared", rank=4, sides="output-full").group_ranks(Group("48x12", 48, 12, 5), D)
    group = Group("48x12", 48, 12, 5)
    assert get_method("shared").side_ranks(group, {"rank": 4}) == (4, 4)
    assert get_method("tucker", rank=12).group_ranks(group, D)["sides"] == [48, 12]  # exact
    with pytest.raises(TensorslimError, match="sides must be one of"):
        get_method("tucker", sides="wider")


@pytest.mark.parametrize("method", ["shared", "tucker"])
def test_budget_keeps_whole_the_side_a_rectangular_stack_needs(method):
    """Slices that share a 2-dim column space while their rows span all 24 dimensions: the search keeps
    the row side whole; its error bound bounds the truncated HOSVD's actual error (tensorly)."""
    import tensorly as tl
    from tensorly.decomposition import tucker as tl_tucker

    from tensorslim.decomposition.hooi import unfolding_energies

    g = torch.Generator().manual_seed(1)
    n, R, C, D = 20, 24, 8, 8
    group = {"24x8": Group("24x8", R, C, n)}
    W = torch.randn(n, R, 2, generator=g, dtype=torch.float64) @ torch.randn(2, C, generator=g, dtype=torch.float64)
    W = W + 0.05 * torch.randn(n, R, C, generator=g, dtype=torch.float64)
    budget = n * R * C // 2
    chosen = get_method(method).for_budget(group, D, budget, stacks={"24x8": W})
    ranks = chosen.group_ranks(group["24x8"], D)
    assert chosen.total_params(group, D) <= budget
    assert ranks["sides"][0] == R and ranks["sides"][1] < C, ranks
    modes = [ranks.get("layer_rank", n), *ranks["sides"]]
    core, factors = tl_tucker(tl.tensor(W.numpy()), rank=modes, init="svd", n_iter_max=0)
    actual = ((tl.tucker_to_tensor((core, factors)) - W.numpy()) ** 2).sum()
    assert actual <= chosen.error_bound(group, D, {"24x8": unfolding_energies(W)}) * (1 + 1e-4)  # float32 Grams
    for policy in ("proportional", "shorter-full"):
        other = get_method(method, sides=policy).for_budget(group, D, budget, stacks={"24x8": W})
        assert chosen.error_bound(group, D, {"24x8": unfolding_energies(W)}) <= other.error_bound(
            group, D, {"24x8": unfolding_energies(W)}
        )


def test_svd_is_lowrank_without_its_middle():
    """svd (SVD-LLM's two factors) reconstructs what lowrank does at the same rank, weight-only and
    data-aware, with r^2 fewer weights per slice; weight-only, its factors carry the singular values
    evenly."""
    from tensorslim.decomposition.slice_weights import SliceWeights

    torch.manual_seed(0)
    group, W = Group("12x8", 12, 8, 5), torch.randn(5, 12, 8)
    X = torch.randn(5, 40, 12).double()
    w = SliceWeights(torch.arange(5), X.mT @ X / 40, torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8))
    svd, lowrank = get_method("svd", rank=3), get_method("lowrank", rank=3)
    ranks = svd.group_ranks(group, 8)
    for fit in ("fit", "fit_calibrated"):
        args = (W, group, ranks) + ((w.damped(0.0),) if fit == "fit_calibrated" else ())
        two, _ = getattr(svd, fit)(*args)
        three, _ = getattr(lowrank, fit)(*args)
        assert set(two) == {"U", "V"}
        torch.testing.assert_close(svd.reconstruct(two), lowrank.reconstruct(three), atol=1e-5, rtol=1e-4)
        if fit == "fit":  # orthonormal singular vectors: each side carries sqrt(s)
            torch.testing.assert_close(two["U"].norm(dim=1), two["V"].norm(dim=2), atol=1e-4, rtol=1e-4)
    assert svd.num_params(group, ranks) == 5 * (12 + 8) * 3 == lowrank.num_params(group, ranks) - 5 * 3 * 3
