"""Decomposition math: stacking orientation, the three methods, HOSVD + HOOI against tensorly, budgets."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from tensorslim.decomposition.budget import ranks_for_budget
from tensorslim.decomposition.hooi import sweep_dtype, tucker_hooi
from tensorslim.decomposition.methods import METHODS, get_method
from tensorslim.decomposition.stacking import check_encoder, layer_slots, ops_slots, slice_of, stack
from tensorslim.errors import TensorslimError


def tiny_bert(hidden=16, layers=2, ffn_mult=4, seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=ffn_mult * hidden, max_position_embeddings=32)).eval()


def tucker_to_tensor(core, factors):
    return torch.einsum("lab,nl,Da,Eb->nDE", core, *factors)


@pytest.mark.parametrize("ops,count", [("all", 12), ("san", 4), ("ffn", 8)])
def test_stack_shape_and_order(ops, count):
    model = tiny_bert()
    W = stack(model.encoder.layer, ops, 16, 4)
    assert W.shape == (2 * count, 16, 16)
    names = [s.name for s in ops_slots(ops, 4)]
    assert names == {"all": [s.name for s in layer_slots(4)], "san": ["q", "k", "v", "o"],
                     "ffn": [f"ffn_in.{j}" for j in range(4)] + [f"ffn_out.{j}" for j in range(4)]}[ops]
    layer1 = model.encoder.layer[1]
    first = ops_slots(ops, 4)[0]
    expected = {"q": layer1.attention.self.query.weight.T, "ffn_in.0": layer1.intermediate.dense.weight[:16]}[first.name]
    torch.testing.assert_close(W[count], expected)


def test_slices_act_like_the_dense_layers():
    """x @ M (or x @ M.T for [out, in] slices) reproduces each nn.Linear block's output."""
    model = tiny_bert()
    layer = model.encoder.layer[0]
    x = torch.randn(5, 16)
    W = stack(model.encoder.layer, "all", 16, 4)[:12]
    q = x @ W[0]
    torch.testing.assert_close(q, x @ layer.attention.self.query.weight.T)
    ffn_in = torch.cat([x @ W[4 + j].T for j in range(4)], dim=-1)
    torch.testing.assert_close(ffn_in, x @ layer.intermediate.dense.weight.T)
    z = torch.randn(5, 64)
    ffn_out = sum(z[:, 16 * j:16 * (j + 1)] @ W[8 + j] for j in range(4))
    torch.testing.assert_close(ffn_out, z @ layer.output.dense.weight.T)


def test_encoders_other_than_bert_are_refused():
    from transformers import GPT2Config, T5Config

    for config in (GPT2Config(), T5Config()):
        with pytest.raises(TensorslimError, match="not a BERT-family encoder"):
            check_encoder(config)
    with pytest.raises(TensorslimError, match="not a multiple"):
        check_encoder(BertConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2))


@pytest.mark.parametrize("name", list(METHODS))
def test_full_rank_is_exact(name):
    W = stack(tiny_bert().encoder.layer, "all", 16, 4)
    method = get_method(name, 16, 24 if name == "tucker" else None)
    factors = method.fit(W)
    torch.testing.assert_close(method.reconstruct(factors), W, atol=1e-5, rtol=1e-4)
    assert all(factors[k].abs().sum() > 0 for k in factors)  # never zero factors


@pytest.mark.parametrize("name,rank,layer_rank", [("lowrank", 6, None), ("shared", 6, None), ("tucker", 6, 10)])
def test_parameter_counts_match_the_paper_formulas(name, rank, layer_rank):
    n, D, d, l = 24, 16, rank, layer_rank
    expected = {"lowrank": n * (2 * D * d + d * d), "shared": 2 * D * d + n * d * d,
                "tucker": 2 * D * d + n * (l or 0) + (l or 0) * d * d}[name]
    method = get_method(name, rank, layer_rank)
    assert method.num_params(n, D) == expected
    factors = method.fit(stack(tiny_bert().encoder.layer, "all", 16, 4))
    assert sum(t.numel() for t in factors.values()) == expected


def test_paper_table_for_bert_base():
    """docs/method.md, section 2: IV 72-384 holds 11,217,024 weights of BERT-base's 84,934,656."""
    assert get_method("tucker", 384, 72).num_params(144, 768) == 11_217_024
    assert round(144 * 768 * 768 / get_method("tucker", 256, 36).num_params(144, 768), 1) == 30.8
    assert round(get_method("shared", 384).num_params(144, 768) / 1e6, 1) == 21.8


def test_lowrank_is_the_truncated_svd():
    W = stack(tiny_bert().encoder.layer, "all", 16, 4)
    factors = get_method("lowrank", 5).fit(W)
    R = get_method("lowrank", 5).reconstruct(factors)
    s = torch.linalg.svdvals(W.double())
    optimal = s[:, 5:].pow(2).sum(-1).sqrt()  # Eckart-Young
    torch.testing.assert_close(torch.linalg.matrix_norm((W - R).double()), optimal, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("ranks", [(10, 6, 6), (24, 8, 8), (5, 16, 4), (10, 6, 16)])
def test_hooi_matches_tensorly(ranks, precision):
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import partial_tucker

    tl.set_backend("pytorch")
    W = stack(tiny_bert(seed=1).encoder.layer, "all", 16, 4)
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
    W = stack(tiny_bert(seed=2).encoder.layer, "all", 16, 4)
    a = tucker_hooi(W, (8, 6, 6), tol=1e-7, precision="float32")
    b = tucker_hooi(W, (8, 6, 6), tol=1e-7, precision="float32")
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    errors = a[2].errors
    assert all(e1 >= e2 - 1e-9 for e1, e2 in zip(errors, errors[1:]))


def test_bfloat16_sweeps_finish_like_float32():
    """bfloat16 sweeps, then float32 ones: float32 orthonormal factors, the core is W's projection,
    and the error is no worse than the float32 run's by 1e-5."""
    W = stack(tiny_bert(hidden=32, seed=3).encoder.layer, "all", 32, 4)  # (24, 32, 32)
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
    W = stack(tiny_bert(seed=4).encoder.layer, "all", 16, 4)
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
    with pytest.raises(TensorslimError, match="unknown decomposition method 'svd'"):
        get_method("svd", 8)
    for rank in (0, -1, 17):
        with pytest.raises(TensorslimError, match="out of range"):
            get_method("shared", rank).validate(24, 16)
    for layer_rank in (0, 25, None):
        with pytest.raises(TensorslimError, match="layer rank"):
            get_method("tucker", 8, layer_rank).validate(24, 16)
    with pytest.raises(TensorslimError, match="unknown ops"):
        ops_slots("attention", 4)


def test_ranks_for_budget():
    n, D = 144, 768
    d, l = ranks_for_budget("tucker", n, D, 2_000_000)
    method = get_method("tucker", d, l)
    assert l == 72 and method.num_params(n, D) <= 2_000_000 < get_method("tucker", d + 1, l).num_params(n, D)
    assert ranks_for_budget("tucker", n, D, 11_217_024, layer_rank=72) == (384, 72)
    d, _ = ranks_for_budget("shared", n, D, 1_000_000)
    assert get_method("shared", d).num_params(n, D) <= 1_000_000 < get_method("shared", d + 1).num_params(n, D)
    with pytest.raises(TensorslimError, match="no lowrank rank setting fits in 100"):
        ranks_for_budget("lowrank", n, D, 100)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), D=st.integers(2, 12), data=st.data())
def test_tucker_property(n, D, data):
    """Random shapes and ranks: orthonormal factors, error equals the formula, full rank exact."""
    torch.manual_seed(n * 100 + D)
    W = torch.randn(n, D, D)
    l, d = data.draw(st.integers(1, n)), data.draw(st.integers(1, D))
    core, factors, info = tucker_hooi(W, (l, d, d), max_iter=5, precision=data.draw(st.sampled_from(["float32", "bfloat16"])))
    err = ((W - tucker_to_tensor(core, factors)).norm() / W.norm()).item()
    assert info.errors[-1] == pytest.approx(err, abs=1e-4)
    core, factors, _ = tucker_hooi(W, (n, D, D))
    torch.testing.assert_close(tucker_to_tensor(core, factors), W, atol=1e-5, rtol=1e-5)
    method = get_method("tucker", d, l)
    assert sum(t.numel() for t in method.fit(W, max_iter=2).values()) == method.num_params(n, D)


def test_slice_of_rejects_nothing_silently():
    model = tiny_bert(ffn_mult=2)
    W = stack(model.encoder.layer, "all", 16, 2)
    assert W.shape == (2 * 8, 16, 16)
    weights = {"ffn_out": model.encoder.layer[0].output.dense.weight}
    slot = [s for s in layer_slots(2) if s.name == "ffn_out.1"][0]
    torch.testing.assert_close(slice_of(weights, slot, 16), model.encoder.layer[0].output.dense.weight[:, 16:].T)
