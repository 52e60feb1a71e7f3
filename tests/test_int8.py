"""`tensorslim export --format int8`: factored projections as chains of linear maps (equal to the
factors' dense matrices in float32), the int8 model close to the float one, smaller on disk, reloaded
exactly, and an already quantised model refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

import tensorslim
from tensorslim.compress.api import decompose, decompose_to_dir
from tensorslim.compress.export import export_to_dir
from tensorslim.compress.factored import FactoredProjection
from tensorslim.compress.int8 import ChainedProjection, SideBank, chain, quantize
from tensorslim.compress.loading import load_model
from tensorslim.errors import TensorslimError
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer

#: wide enough, and ranks (as in the docs/results.md 7x MiniLM student: d/D ~ 0.36, a bank of every
#: slice) large enough, that the projections' weights outweigh torch.save's per-tensor bookkeeping
WIDE = dict(hidden_size=128, intermediate_size=512)
WIDE_RANKS = {"rank": 48, "layer_rank": 16}  # at most the 16 slices of a tiny decoder's windowed groups


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest cosine similarity between matching vectors along the last axis."""
    a, b = a.double().flatten(0, -2), b.double().flatten(0, -2)
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).min().item()


def student_dir(tmp_path, model_type: str, head: str, ranks=None, **overrides):
    """A tiny random teacher of `model_type` with `head` (config `overrides`), decomposed into a student
    directory (tucker with `ranks`)."""
    teacher = tmp_path / "teacher"
    tiny_model(model_type, head, **overrides).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    student = tmp_path / "student"
    decompose_to_dir(teacher, student, "tucker", **(ranks or {"rank": 8, "layer_rank": 2}))
    return student


@pytest.mark.parametrize(
    "model_type,head,method,options,merged",
    [
        ("bert", "base", "tucker", {"rank": 8, "layer_rank": 2}, False),
        ("bert", "base", "shared", {"rank": 8}, False),
        ("bert", "base", "lowrank", {"rank": 8}, False),
        ("bert", "base", "lowrank", {"rank": 16}, True),  # 2 x 32 x 16 factor weights: no fewer than 32 x 32
        ("gpt2", "causal_lm", "tucker", {"rank": 8, "layer_rank": 2}, False),  # fused q k v: one input, 3 tiles
        ("llama", "causal_lm", "lowrank", {"rank": 8}, False),
        ("llama", "causal_lm", "svd", {"rank": 8}, False),
        ("bert", "base", "shared", {"rank": 8, "layer_window": 1, "sides": "output-full"}, False),  # no B
        (
            "llama",
            "causal_lm",
            "tucker",
            {"rank": 8, "layer_rank": 2, "layer_window": 1, "sides": "output-full"},
            False,
        ),
    ],
)
def test_a_chain_computes_the_dense_matrix_of_its_projection(model_type, head, method, options, merged):
    """Every projection's chain (float32, before quantisation) against x @ W + b with W the dense matrix
    its factors reconstruct; fan-in and fan-out modules of every method, shared sides stored once."""
    student, _ = decompose(tiny_model(model_type, head), method, **options)
    sides = SideBank()
    projections = [m for m in student.modules() if isinstance(m, FactoredProjection)]
    assert {m.fan_in for m in projections} == {False, True} or model_type == "llama"
    x = torch.randn(3, 5, max(m.in_features for m in projections), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for module in projections:
            chained = chain(module, sides)
            assert isinstance(chained, nn.Linear if merged else ChainedProjection)
            xi = x[..., : module.in_features]
            expected = xi @ module.dense_weight() + (module.bias if module.bias is not None else 0)
            torch.testing.assert_close(chained(xi), expected, atol=1e-5, rtol=1e-4)
    groups = student.base_model.tensorslim_factors.groups
    assert (len(sides.linears) > 0) == (method not in ("lowrank", "svd")) and len(sides.linears) <= 2 * len(groups)


@pytest.mark.parametrize(
    "model_type,head,output",
    [("bert", "sequence_classification", "logits"), ("llama", "causal_lm", "logits")],
)
def test_an_int8_student_is_close_to_the_float_one_smaller_and_reloads_exactly(tmp_path, model_type, head, output):
    model_dir = student_dir(tmp_path, model_type, head, WIDE_RANKS, **WIDE)
    out = tmp_path / "int8"
    record = export_to_dir(model_dir, out, "int8")
    student = load_model(model_dir)
    in_memory = quantize(load_model(model_dir))
    reloaded = tensorslim.load_model(out)  # one call
    assert type(reloaded) is type(student)
    inputs = tiny_inputs(4, 17, pad=model_type == "bert")
    with torch.no_grad():
        expected = student(**inputs)[output]
        ours = in_memory(**inputs)[output]
        theirs = reloaded(**inputs)[output]
    assert torch.equal(theirs, ours)
    # 0.98: the int8 word-embedding rows add their rounding to the near-zero logits (|x| ~ 0.05) of a
    # random two-class head, whose 2-vectors' cosine is the most sensitive measure of it
    assert cosine(ours, expected) > 0.98 and not torch.equal(ours, expected)
    assert 0 < record["check"]["max_abs_diff"] and record["check"]["min_cosine"] > 0.99
    assert record["reload"] == {"max_abs_diff": 0.0}
    size = record["weights_bytes"]
    assert size["float32"] == (model_dir / "model.safetensors").stat().st_size
    assert size["int8"] == (out / "model_int8.pt").stat().st_size < size["float32"]
    # every projection and an untied word-embedding table is int8; nothing float is left but an output
    # layer tied to the input embeddings (and the table it is tied to)
    modules = list(reloaded.modules())
    assert not any(isinstance(m, FactoredProjection) for m in modules)
    assert sum(isinstance(m, ChainedProjection) for m in modules) == (7 if model_type == "llama" else 6) * 2
    assert all(isinstance(m, DynamicLinear) for m in reloaded.base_model.tensorslim_sides.linears.values())
    floats = [m for m in modules if type(m) is nn.Linear]
    embeddings = reloaded.get_input_embeddings().weight
    assert all(m.weight is embeddings for m in floats) and len(floats) == (model_type == "llama")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tensorslim_int8"]["decomposition"]["method"] == "tucker"


def test_a_dense_model_exports_to_int8_too(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_model("bert", "sequence_classification").save_pretrained(teacher)
    record = export_to_dir(teacher, tmp_path / "int8", "int8")
    assert not record["decomposed"] and record["check"]["min_cosine"] > 0.99
    assert record["weights_bytes"]["int8"] < record["weights_bytes"]["float32"]
    model = load_model(tmp_path / "int8")
    assert sum(isinstance(m, DynamicLinear) for m in model.modules()) == 6 * 2 + 2  # + pooler and classifier


def test_an_already_quantised_model_is_refused_and_nothing_is_written(tmp_path):
    model_dir = student_dir(tmp_path, "bert", "sequence_classification")
    export_to_dir(model_dir, tmp_path / "int8", "int8")
    for fmt in ("int8", "onnx", "dense"):
        with pytest.raises(TensorslimError, match="is already quantised to int8"):
            export_to_dir(tmp_path / "int8", tmp_path / "again", fmt)
    with pytest.raises(TensorslimError, match="already quantised to int8"):
        quantize(load_model(tmp_path / "int8"))
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(TensorslimError, match=r"already quantised \(quant_method 'gptq'\)"):
        export_to_dir(model_dir, tmp_path / "again", "int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "student", "teacher"]


def test_an_int8_model_below_the_cosine_is_refused_and_leaves_nothing(tmp_path):
    model_dir = student_dir(tmp_path, "bert", "sequence_classification")
    with pytest.raises(TensorslimError, match=r"mean cosine similarity of 0\.9\d+ to the model in logits") as caught:
        export_to_dir(model_dir, tmp_path / "int8", "int8", min_cosine=1.0)
    assert "nothing was written" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]


@pytest.mark.slow
def test_the_7x_minilm_student_in_int8(real_teacher_dir, tmp_path):
    """The docs/results.md 7x student of the packaged MiniLM (base model, as packaged)."""
    student = tmp_path / "student"
    decompose_to_dir(real_teacher_dir, student, "tucker", layer_rank=72, budget=1516690)
    record = export_to_dir(student, tmp_path / "int8", "int8")
    assert record["check"]["mean_cosine"] >= 0.98
    assert record["weights_bytes"]["int8"] < record["weights_bytes"]["float32"]
