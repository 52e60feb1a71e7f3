"""Factorised word embeddings (compress/embeddings.py): the forward against the dense table, the SVD
and frequency fits against numpy references, tying (one storage, both sides trained together),
save / load, merge, counts, ranks from a compression, the CLI, ONNX and int8."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

import tensorslim  # noqa: F401  (registers the section with transformers)
from tensorslim.compress.api import decompose, decompose_to_dir, export_dense
from tensorslim.compress.calibration import CalibrationData
from tensorslim.compress.counts import count_parameters
from tensorslim.compress.embeddings import (
    FactoredEmbedding,
    FactoredHead,
    fit,
    rank_for_compression,
    token_counts,
)
from tensorslim.compress.export import export_to_dir
from tensorslim.compress.int8 import ChainedEmbedding, quantize
from tensorslim.compress.loading import load_model
from tensorslim.train import recipes
from tensorslim.train.general import default_objective
from tiny_models import VOCAB, tiny_inputs, tiny_model, tiny_tokenizer

RANK = 12


def student(model_type="bert", head="sequence_classification", rank=RANK, **kw):
    return decompose(tiny_model(model_type, head), "lowrank", rank=8, embedding_rank=rank, **kw)


def test_forward_is_the_dense_embedding_of_low_at_up():
    torch.manual_seed(0)
    emb = FactoredEmbedding(VOCAB, 32, 5, padding_idx=0)
    nn.init.normal_(emb.low)
    nn.init.normal_(emb.up)
    ids = torch.randint(0, VOCAB, (3, 7))
    ids[0, 0] = 0  # the padding id
    expected = F.embedding(ids, emb.low.detach() @ emb.up.detach())
    torch.testing.assert_close(emb(ids), expected)
    emb(ids).sum().backward()
    assert emb.low.grad[0].abs().sum() == 0 and emb.low.grad[ids[1, 0]].abs().sum() > 0  # padding: no gradient


def test_svd_error_is_the_tail_energy_of_an_independent_svd():
    E = torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(0))
    low, up, record = fit(E, 7)
    s = np.linalg.svd(E.double().numpy(), compute_uv=False)
    assert record["relative_error"] == pytest.approx(np.sqrt((s[7:] ** 2).sum() / (s**2).sum()), rel=1e-10)
    assert low.shape == (VOCAB, 7) and up.shape == (7, 32)
    np.testing.assert_allclose(up @ up.T, np.eye(7), atol=1e-12)  # up has orthonormal rows: low = E up^T
    np.testing.assert_allclose(low, E.double() @ up.T, atol=1e-10)


def test_frequency_fit_is_the_weighted_optimum_and_beats_plain_svd_on_it():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(40, 10, generator=g, dtype=torch.float64)
    counts = torch.zeros(40, dtype=torch.float64)
    counts[:8] = torch.randint(50, 500, (8,), generator=g).double()  # a few frequent tokens, the rest unseen
    w = (counts + 1).numpy()
    low, up, record = fit(E, 3, counts)
    En, lown, upn = E.numpy(), low.numpy(), up.numpy()

    def weighted(lo, u):
        return (w[:, None] * (En - lo @ u) ** 2).sum()

    svd_low, svd_up, _ = fit(E, 3)
    assert weighted(lown, upn) < weighted(svd_low.numpy(), svd_up.numpy())
    # stationary: for fixed up, each row of low is its own least-squares solve (weights drop out per row),
    # and for fixed low, up is the weighted least-squares solve
    np.testing.assert_allclose(lown, np.linalg.lstsq(upn.T, En.T, rcond=None)[0].T, atol=1e-9)
    sw = np.sqrt(w)[:, None]
    np.testing.assert_allclose(upn, np.linalg.lstsq(sw * lown, sw * En, rcond=None)[0], atol=1e-9)
    expected = np.sqrt(weighted(lown, upn) / (w[:, None] * En**2).sum())
    assert record["weighted_error"] == pytest.approx(expected, rel=1e-10)


def test_a_student_embeds_with_its_reconstructed_table_and_records_the_fit():
    teacher = tiny_model("bert", "sequence_classification")
    E = teacher.get_input_embeddings().weight.detach().clone()
    model, record = student()
    emb = model.get_input_embeddings()
    assert isinstance(emb, FactoredEmbedding) and emb.padding_idx == 0
    ids = tiny_inputs()["input_ids"]
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.low.detach() @ emb.up.detach()))
    s = np.linalg.svd(E.double().numpy(), compute_uv=False)
    rec = record["embeddings"]
    assert (
        rec["rank"] == RANK
        and rec["init"] == "svd"
        and rec["weights"]
        == {
            "teacher": VOCAB * 32,
            "student": RANK * (VOCAB + 32),
        }
    )
    assert rec["relative_error"] == pytest.approx(np.sqrt((s[RANK:] ** 2).sum() / (s**2).sum()), rel=1e-5)
    parts = record["parameters"]
    assert parts["student"]["embeddings"] - parts["teacher"]["embeddings"] == RANK * (VOCAB + 32) - VOCAB * 32
    assert count_parameters(model)["embeddings"] == parts["student"]["embeddings"]


def test_calibration_tokens_give_the_frequency_fit():
    batches = [tiny_inputs(8, 20, seed=s) for s in range(2)]
    data = CalibrationData("tiny", batches, 20, 0)
    _, record = decompose(
        tiny_model("bert", "sequence_classification"), "lowrank", rank=8, embedding_rank=RANK, calibration=data
    )
    counts = token_counts(batches, VOCAB)
    assert counts.sum() == sum(int(b["attention_mask"].sum()) for b in batches)
    rec = record["embeddings"]
    assert rec["init"] == "frequency" and rec["tokens"] == counts.sum()
    E = tiny_model("bert", "sequence_classification").get_input_embeddings().weight
    assert rec["weighted_error"] == pytest.approx(fit(E, RANK, counts)[2]["weighted_error"], rel=1e-9)


@pytest.mark.parametrize(
    "model_type,head,auto",
    [("bert", "sequence_classification", AutoModel), ("llama", "causal_lm", AutoModelForCausalLM)],
)
def test_save_and_from_pretrained_give_the_identical_student(tmp_path, model_type, head, auto):
    model, _ = student(model_type, head)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["embeddings"] == {
        "rank": RANK,
        "tied": True,  # the teacher config's tie_word_embeddings (both tie by default)
        "init": "svd",
    }
    loaded = (auto.from_pretrained(tmp_path) if auto is AutoModelForCausalLM else load_model(tmp_path)).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_a_tied_head_reads_the_same_factors_and_trains_with_the_input_side():
    model, _ = student("llama", "causal_lm")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(head, FactoredHead) and head.embedding is emb and not list(head.parameters())
    keys = list(model.state_dict())
    assert [k for k in keys if "embed" in k or "lm_head" in k] == ["model.embed_tokens.low", "model.embed_tokens.up"]
    inputs = tiny_inputs(pad=False)
    out = model(**inputs, output_hidden_states=True)
    h = out.hidden_states[-1]
    torch.testing.assert_close(out.logits, h @ (emb.low @ emb.up).T, atol=1e-5, rtol=1e-5)
    # gradients of both sides: those of a dense model tied to W = low @ up, through the factors
    dense = export_dense(model).train()
    W = dense.get_input_embeddings().weight
    assert dense.get_output_embeddings().weight is W
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    dense(**inputs, labels=inputs["input_ids"]).loss.backward()
    torch.testing.assert_close(emb.low.grad, W.grad @ emb.up.detach().T, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(emb.up.grad, emb.low.detach().T @ W.grad, atol=1e-6, rtol=1e-4)
    before = (emb.low.detach().clone(), emb.up.detach().clone())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(emb.low, before[0]) and not torch.equal(emb.up, before[1])
    with torch.no_grad():
        out = model(**tiny_inputs(pad=False), output_hidden_states=True)
        torch.testing.assert_close(out.logits, out.hidden_states[-1] @ (emb.low @ emb.up).T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type,head", [("llama", "causal_lm"), ("gpt2", "causal_lm"), ("bert", "masked_lm")])
def test_merge_gives_the_original_class_tied_again(model_type, head):
    model, _ = student(model_type, head)
    inputs = tiny_inputs(pad=False)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.dequantize()
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert type(emb) is nn.Embedding and type(out) is nn.Linear and out.weight is emb.weight
    assert model.config.tie_word_embeddings and not hasattr(model.config, "quantization_config")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_an_untied_head_stays_dense():
    model, _ = decompose(
        tiny_model("llama", "causal_lm", tie_word_embeddings=False), "lowrank", rank=8, embedding_rank=RANK
    )
    assert type(model.get_output_embeddings()) is nn.Linear
    assert isinstance(model.get_input_embeddings(), FactoredEmbedding)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_rank_from_a_compression_is_the_largest_that_fits(share):
    r = rank_for_compression(VOCAB, 32, share)
    assert r * (VOCAB + 32) <= (1 - share) * VOCAB * 32 < (r + 1) * (VOCAB + 32)
    _, record = decompose(tiny_model("bert", "base"), "lowrank", rank=8, embedding_compression=share)
    assert record["embeddings"]["rank"] == r


def test_the_default_objectives_add_the_embedding_term_for_a_factored_student(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_model("bert", "masked_lm").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    plain, factored = tmp_path / "plain", tmp_path / "factored"
    decompose_to_dir(teacher, plain, "lowrank", rank=8)
    decompose_to_dir(teacher, factored, "lowrank", rank=8, embedding_rank=RANK)
    assert default_objective(teacher, plain).losses == ["attention", "hidden"]
    assert default_objective(teacher, factored).losses == ["attention", "hidden", "embedding"]
    assert recipes.task_objectives(False, True)[1].losses == ["attention", "hidden", "embedding"]
    assert recipes.task_objectives(False, False)[1].losses == ["attention", "hidden"]


def test_cli_writes_a_loadable_student_with_factored_embeddings(cli, tmp_path):
    teacher = tmp_path / "teacher"
    tiny_model("bert", "sequence_classification").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    out = tmp_path / "student"
    result = cli(
        "decompose",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--method",
        "lowrank",
        "--rank",
        "8",
        "--embedding-rank",
        str(RANK),
    )
    assert result.code == 0, result
    record = json.loads((out / "decomposition.json").read_text())
    assert record["embeddings"]["rank"] == RANK
    model = load_model(out)
    assert isinstance(model.get_input_embeddings(), FactoredEmbedding)
    assert model.get_input_embeddings().low.shape == (VOCAB, RANK)


@pytest.mark.parametrize("model_type,head", [("bert", "sequence_classification"), ("llama", "causal_lm")])
def test_onnx_export_of_a_factored_embedding_student(tmp_path, model_type, head):
    teacher = tmp_path / "teacher"
    tiny_model(model_type, head).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    model_dir = tmp_path / "student"
    decompose_to_dir(teacher, model_dir, "lowrank", rank=8, embedding_rank=RANK)
    record = export_to_dir(model_dir, tmp_path / "onnx", "onnx")
    assert record["check"]["max_abs_diff"] <= 1e-4
    graph = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    if model_type == "bert":
        inputs = tiny_inputs(2, 9)
        (logits,) = graph.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = load_model(model_dir)(**inputs).logits.numpy()
        assert np.abs(logits - expected).max() < 1e-4
    dense = export_to_dir(model_dir, tmp_path / "dense", "dense")
    assert dense["check"]["max_abs_diff"] <= 1e-4
    assert type(load_model(tmp_path / "dense").get_input_embeddings()) is nn.Embedding


def test_int8_of_a_factored_embedding_student_quantises_the_table_and_reloads_exactly(tmp_path):
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    teacher = tmp_path / "teacher"
    tiny_model("bert", "sequence_classification").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    model_dir = tmp_path / "student"
    decompose_to_dir(teacher, model_dir, "lowrank", rank=8, embedding_rank=RANK)
    record = export_to_dir(model_dir, tmp_path / "int8", "int8")
    assert record["reload"] == {"max_abs_diff": 0.0} and record["check"]["min_cosine"] > 0.99
    reloaded = load_model(tmp_path / "int8")
    emb = reloaded.get_input_embeddings()
    assert isinstance(emb, ChainedEmbedding)
    assert isinstance(emb.table, QuantizedEmbedding) and isinstance(emb.up, DynamicLinear)
    # the table's rows: one scale per row, within half a step of the float rows
    table = emb.table.weight()
    low = load_model(model_dir).get_input_embeddings().low.detach()
    step = table.q_per_channel_scales().float()[:, None]
    assert ((table.dequantize() - low).abs() <= step / 2 + 1e-6).all()


def test_int8_quantises_untied_embedding_tables_and_keeps_a_tied_one_float():
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding

    dense = quantize(tiny_model("bert", "sequence_classification"))
    assert isinstance(dense.get_input_embeddings(), QuantizedEmbedding)
    tables = dense.base_model.embeddings
    assert isinstance(tables.position_embeddings, QuantizedEmbedding)
    assert isinstance(tables.token_type_embeddings, QuantizedEmbedding)
    tied = quantize(copy.deepcopy(student("llama", "causal_lm")[0]))
    assert type(tied.get_input_embeddings()) is FactoredEmbedding and type(tied.get_output_embeddings()) is FactoredHead
