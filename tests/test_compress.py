"""The student changed in place: factored forward == dense forward of the reconstruction, full rank ==
teacher, training, caching, shared x A, save/load through transformers, merge back to dense."""

import copy
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
)

from tensorslim.compress.api import decompose, export_dense, from_teacher
from tensorslim.compress.factored import FactoredProjection, laid_out, matmul
from tensorslim.compress.inplace import bank_of, is_decomposed
from tensorslim.errors import TensorslimError

D = 32


def teacher(cls=BertForSequenceClassification, num_labels=3, ffn_mult=4, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=120,
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=ffn_mult * D,
        max_position_embeddings=40,
        num_labels=num_labels,
    )
    return cls(config).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.arange(11) > 5).long().expand(3, -1)}


METHODS = [
    ("tucker", dict(rank=6, layer_rank=10)),
    ("shared", dict(rank=6)),
    ("lowrank", dict(rank=6)),
    ("svd", dict(rank=6)),
    ("tucker", dict(rank=24, layer_rank=8)),
    ("shared", dict(rank=6, layer_window=1, sides="output-full")),  # per-layer groups, no output factor
    ("tucker", dict(rank=6, layer_rank=3, layer_window=1, sides="output-full")),
]


@pytest.mark.parametrize("method,options", METHODS)
@pytest.mark.parametrize("ops", ["all", "san", "ffn"])
def test_factored_forward_equals_dense_reconstruction(method, options, ops):
    """The student equals the teacher's class holding its reconstructed weights (export_dense)."""
    if "layer_rank" in options:  # at most the slices ops selects: 2 layers x (4 san, 8 ffn, 12 all)
        options = {**options, "layer_rank": min(options["layer_rank"], {"san": 8, "ffn": 16, "all": 24}[ops])}
    student = from_teacher(teacher(), method, ops=ops, **options).eval()
    dense = export_dense(student)
    assert not is_decomposed(dense) and is_decomposed(student)
    with torch.no_grad():
        a = student(**batch(), output_hidden_states=True)
        b = dense(**batch(), output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
    for h1, h2 in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["tucker", "shared", "lowrank", "svd"])
@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForMaskedLM])
def test_full_rank_student_equals_teacher(method, cls):
    t = teacher(cls)
    student = from_teacher(copy.deepcopy(t), method, rank=D, **({"layer_rank": 24} if method == "tucker" else {}))
    assert type(student) is cls
    with torch.no_grad():
        a, b = t(**batch(), output_hidden_states=True), student(**batch(), output_hidden_states=True)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    assert len(b.hidden_states) == 3


def test_cpu_inference_in_groups_of_sequences_gives_the_same_outputs():
    """inference_chunk_tokens=11 runs the base model one sequence at a time (padding mask included)."""
    from tensorslim.compress import chunking

    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=10).eval()
    outputs = {}
    for chunk in (0, 11, 25):
        chunking.disable(student.bert)
        chunking.enable(student.bert, chunk)
        with torch.no_grad():
            outputs[chunk] = student(**batch(), output_hidden_states=True)
    for chunk in (11, 25):
        for name in ("logits", "hidden_states"):
            torch.testing.assert_close(outputs[chunk][name], outputs[0][name], atol=1e-6, rtol=1e-5)


def test_gradients_reach_every_factor_and_training_reduces_loss():
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).train()
    labels = torch.tensor([0, 2, 1])
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = student(**batch(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        if not losses:
            for name, p in bank_of(student).named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("method,options", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method, options):
    """x A is not shared and per-slice factors are not split once per forward when the layers are
    recomputed (modules index their slices instead); gradients are unchanged."""
    grads = []
    for checkpointing in (False, True):
        student = from_teacher(teacher(), method, **options).train()
        student.config.hidden_dropout_prob = student.config.attention_probs_dropout_prob = 0.0
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if checkpointing:
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        student(**batch(), labels=torch.tensor([0, 2, 1])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in bank_of(student).named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method,options", METHODS)
def test_each_per_slice_factor_enters_the_backward_graph_once(method, options):
    """Modules read their slices of a per-slice factor (n, ...) from one split per forward, so the
    backward pass writes that factor's gradient once, not a zero-filled gradient of the whole stack
    per module (what indexing the stack in every module costs)."""
    student = from_teacher(teacher(ffn_mult=2), method, **options).train()
    bank = bank_of(student)
    per_slice = {id(p): name for name, p in bank.named_parameters() if name.rsplit(".", 1)[-1] in bank.method.per_slice}
    assert per_slice
    uses = dict.fromkeys(per_slice.values(), 0)
    seen, todo = set(), [student(**batch(), labels=torch.tensor([0, 2, 1])).loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None and id(getattr(child, "variable", None)) in per_slice:
                uses[per_slice[id(child.variable)]] += 1
            todo.append(child)
    assert set(uses.values()) == {1}, uses


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_matmul_reads_every_layout_as_a_dense_product(shape):
    """laid_out keeps a product with its longer dimension contiguous, a factor's view in whichever
    orientation is contiguous, anything else row-major; matmul gives x @ W (+ bias) for each."""
    torch.manual_seed(0)
    W, x, bias = torch.randn(*shape), torch.randn(2, 3, shape[0]), torch.randn(shape[1])
    expected = x @ W + bias
    with torch.no_grad():
        product, transposed, as_is = laid_out(W, product=True), laid_out(W.T.contiguous().T), laid_out(W)
        gapped = torch.stack([W, W], -1).flatten(-2)[:, ::2]  # W, neither orientation contiguous
        copied = laid_out(gapped)
    assert product.stride(0 if shape[0] > shape[1] else 1) == 1
    assert not transposed.is_contiguous() and transposed.mT.is_contiguous()  # read in place, no copy
    assert as_is is W and copied.is_contiguous()
    for laid in (product, transposed, as_is, copied):
        torch.testing.assert_close(matmul(x, laid, bias), expected)
        torch.testing.assert_close(matmul(x, laid), x @ W)


def test_eval_cache_is_used_and_invalidated():
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).eval()
    bank = bank_of(student)
    with torch.no_grad():
        first = student(**batch()).logits
        memo = dict(bank._memo)
        again = student(**batch()).logits
        assert memo and all(bank._memo[k] is v for k, v in memo.items())  # reused, not rebuilt
        torch.testing.assert_close(first, again)
        bank.groups["32x32"].C.mul_(0.5)  # an in-place change, like an optimizer step
        changed = student(**batch()).logits
    assert not torch.allclose(first, changed)
    fresh = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).eval()
    with torch.no_grad():
        bank_of(fresh).groups["32x32"].C.mul_(0.5)
        torch.testing.assert_close(changed, fresh(**batch()).logits)


def test_q_k_v_share_one_x_times_a():
    """Within a forward, the three projections of one input compute x A once."""
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).eval()
    calls = []
    bank = bank_of(student)
    original = bank.shared_input

    def counting(key, x, A):
        calls.append((key, x.data_ptr()))
        return original(key, x, A)

    bank.shared_input = counting
    products = []
    with torch.no_grad(), MatmulCounter(products):
        student(**batch())
    computed = [s for s in products if s == (3 * 11, 6)]  # (tokens, d) products
    # per layer 5 modules ask for x A (q, k, v, o, ffn_in) but it is computed 3 times (q k v share it;
    # o and ffn_in read other inputs), plus the FFN output's (tokens, 4 d) @ (4 d, d) middle product
    assert len(calls) == 2 * 5 and len(computed) == 2 * (3 + 1)


def test_a_forward_holds_no_earlier_layers_input_for_sharing():
    """The x A cache keeps only the latest input: once the next layer's query has run, the last
    layer's FFN input (which nothing else holds) is freed."""
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).eval()
    layers = student.bert.encoder.layer
    seen = {}

    def first(module, args):
        seen["x"] = weakref.ref(args[0])

    def second(module, args):
        seen["alive"] = seen["x"]() is not None

    layers[0].intermediate.dense.register_forward_pre_hook(first)
    layers[1].attention.self.key.register_forward_pre_hook(second)
    with torch.no_grad():
        student(**batch())
    assert seen["alive"] is False


class MatmulCounter(TorchDispatchMode):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.shapes.append(tuple(out.shape))
        return out


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("grad", [True, False])
def test_forward_never_materialises_a_d_by_d_weight(grad):
    """Within the layers (the pooler and heads are dense D x D layers by design)."""
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).train(
        grad
    )  # g d = 24 != D keeps shapes unambiguous
    x = student.bert.embeddings(batch()["input_ids"]).detach()
    with torch.set_grad_enabled(grad), ShapeRecorder() as rec:
        out = x
        for layer in student.bert.encoder.layer:
            out = layer(out)
            out = out[0] if isinstance(out, tuple) else out
        if grad:
            out.sum().backward()
    assert rec.shapes and not [s for s in rec.shapes if len(s) >= 2 and s[-2:] == (D, D)]


@pytest.mark.parametrize(
    "head_cls,auto",
    [(BertForSequenceClassification, AutoModelForSequenceClassification), (BertForMaskedLM, AutoModelForMaskedLM)],
)
def test_save_and_load_with_auto_classes(tmp_path, head_cls, auto):
    student = from_teacher(teacher(head_cls), "tucker", rank=6, layer_rank=8).eval()
    student.save_pretrained(tmp_path)
    keys = list(safe_open(tmp_path / "model.safetensors", "pt").keys())
    assert sum(k.endswith("tensorslim_factors.groups.32x32.U") for k in keys) == 1
    assert not [k for k in keys if k.endswith("query.weight") or k.endswith("intermediate.dense.weight")]
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is head_cls and isinstance(loaded.bert.encoder.layer[1].output.dense, FactoredProjection)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, student(**batch()).logits, atol=0, rtol=0)
        base = AutoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(
            base(**batch()).last_hidden_state, student.bert(**batch()).last_hidden_state, atol=0, rtol=0
        )
    assert type(head_cls.from_pretrained(tmp_path).bert.encoder.layer[0].attention.self.key) is FactoredProjection


def test_dequantize_merges_in_place_and_the_merged_model_saves_as_dense(tmp_path):
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8).eval()
    with torch.no_grad():
        before = student(**batch()).logits
    student.dequantize()
    assert not is_decomposed(student) and not hasattr(student.config, "quantization_config")
    assert isinstance(student.bert.encoder.layer[0].attention.self.query, torch.nn.Linear)
    student.save_pretrained(tmp_path)
    plain = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch()).logits, before, atol=1e-5, rtol=1e-4)


def test_regression_head_uses_mse():
    student = from_teacher(teacher(num_labels=1), "tucker", rank=6, layer_rank=8).eval()
    labels = torch.tensor([0.5, 3.0, 4.5])
    out = student(**batch(), labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels))


def test_mlm_decoder_stays_tied_to_word_embeddings():
    student = from_teacher(teacher(BertForMaskedLM), "tucker", rank=6, layer_rank=8)
    assert (
        student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()
    )


def test_decomposition_record():
    _, record = decompose(teacher(), "tucker", rank=6, layer_rank=8)
    assert record["num_slices"] == 24 and record["slots"][:4] == ["q", "k", "v", "o"]
    assert record["slots"][4:] == [f"ffn_in.{j}" for j in range(4)] + [f"ffn_out.{j}" for j in range(4)]
    assert record["decomposed_weights"]["student"] == 2 * D * 6 + 24 * 8 + 8 * 36
    assert 0 < record["relative_error"] < 1
    assert torch.tensor(record["relative_error_per_layer_slot"]).shape == (2, 12)
    assert len(record["spectra"]["rows"]) == D and record["spectra"]["slices"][0] >= record["spectra"]["slices"][-1]
    assert record["parameters"]["teacher"]["encoder"] - record["parameters"]["student"]["encoder"] == (
        record["decomposed_weights"]["teacher"] - record["decomposed_weights"]["student"]
    )


def test_a_student_is_not_decomposed_twice():
    student = from_teacher(teacher(), "tucker", rank=6, layer_rank=8)
    with pytest.raises(TensorslimError, match="already a decomposed student"):
        decompose(student, "tucker", rank=4)


def test_nan_weights_are_refused_before_any_change():
    t = teacher()
    with torch.no_grad():
        t.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(TensorslimError, match="NaN or infinite"):
        decompose(t, "tucker", rank=6)
    assert not is_decomposed(t)


@pytest.mark.slow
def test_real_teacher_full_rank_and_compressed(real_teacher_dir, tokenizer):
    """all-MiniLM-L6-v2: full rank reproduces its hidden states; more rank reconstructs better."""
    t = AutoModel.from_pretrained(real_teacher_dir).eval()
    enc = tokenizer(
        ["The cat sat on the mat.", "Tensor decomposition compresses BERT."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        ref = t(**enc).last_hidden_state
        full = from_teacher(copy.deepcopy(t), "tucker", rank=384, layer_rank=72).eval()
        torch.testing.assert_close(full(**enc).last_hidden_state, ref, atol=1e-4, rtol=1e-4)
        errors = [
            decompose(copy.deepcopy(t), "tucker", rank=rank, layer_rank=layer_rank)[1]
            for rank, layer_rank in ((64, 18), (192, 36))
        ]
    assert errors[1]["decomposed_weights"]["ratio"] > 6
    # Real weights are far from low rank (relative errors of 0.8-0.95 at these ranks), but more rank
    # always reconstructs better; distillation, not initialisation, closes the gap.
    assert errors[1]["relative_error"] < errors[0]["relative_error"] < 1


@settings(max_examples=15, deadline=None)
@given(
    heads=st.integers(1, 3),
    head_dim=st.integers(2, 6),
    layers=st.integers(1, 2),
    ffn_mult=st.integers(1, 3),
    method=st.sampled_from(["tucker", "shared", "lowrank"]),
    ops=st.sampled_from(["all", "san", "ffn"]),
    data=st.data(),
)
def test_property_factored_equals_dense(heads, head_dim, layers, ffn_mult, method, ops, data):
    """Random shapes and ranks: the factored forward equals the dense forward of the reconstruction,
    and the factor count matches the method's formula."""
    hidden = heads * head_dim
    torch.manual_seed(hidden * 7 + layers)
    config = BertConfig(
        vocab_size=60,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn_mult * hidden,
        max_position_embeddings=16,
        num_labels=2,
    )
    t = BertForSequenceClassification(config).eval()
    n = layers * {"all": 4 + 2 * ffn_mult, "san": 4, "ffn": 2 * ffn_mult}[ops]
    rank = data.draw(st.integers(1, hidden))
    options = {"rank": rank, "max_iter": 3} if method != "lowrank" else {"rank": rank}
    if method == "tucker":
        options["layer_rank"] = data.draw(st.integers(1, n))
    student, record = decompose(t, method, ops=ops, **options)
    student.eval()
    ids = torch.randint(1, 60, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            student(input_ids=ids).logits, export_dense(student)(input_ids=ids).logits, atol=1e-5, rtol=1e-4
        )
    assert sum(p.numel() for p in bank_of(student).parameters()) == record["decomposed_weights"]["student"]
    if rank == hidden and (method != "tucker" or options["layer_rank"] == n):
        assert record["relative_error"] < 1e-5
