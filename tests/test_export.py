"""`tensorslim export` and the graph-friendly forward it needs: torch.compile and torch.export of a
student equal its eager forward; ONNX exports run in onnxruntime (by the test itself) as the student
does, decoders with their KV cache; the dense export loads without tensorslim; a failed check writes
nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tensorslim.compress.api import decompose, decompose_to_dir
from tensorslim.compress.export import export_to_dir
from tensorslim.compress.inplace import bank_of
from tensorslim.compress.loading import load_model
from tensorslim.errors import TensorslimError
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer

TOLERANCE = 1e-4


def student_dir(tmp_path, model_type: str, head: str, **options):
    """A tiny random teacher of `model_type` with `head`, decomposed into a student directory (tucker)."""
    teacher = tmp_path / "teacher"
    tiny_model(model_type, head).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    student = tmp_path / "student"
    decompose_to_dir(teacher, student, "tucker", **(options or {"rank": 8, "layer_rank": 2}))
    return student


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "method,options,backend",
    [
        ("tucker", {"rank": 8, "layer_rank": 2}, "inductor"),
        ("shared", {"rank": 8}, "aot_eager"),  # the graph capture only: inductor's C++ build takes ~20 s
        ("tucker", {"rank": 8, "layer_rank": 2, "layer_window": 1, "sides": "output-full"}, "aot_eager"),
        ("lowrank", {"rank": 8}, "aot_eager"),
        ("lowrank", {"rank": 8, "embedding_rank": 12}, "aot_eager"),  # factorised word embeddings
    ],
)
def test_a_student_compiles_into_one_graph_that_equals_eager(method, options, backend):
    """torch.compile with fullgraph=True (any graph break fails) in inference, where eager keeps its caches;
    two shapes, so the second call runs a recompiled or dynamic graph."""
    student, _ = decompose(tiny_model("bert", "sequence_classification"), method, **options)
    compiled = torch.compile(student, fullgraph=True, backend=backend)
    with torch.no_grad():
        for batch, length in ((3, 12), (2, 7)):
            inputs = tiny_inputs(batch, length)
            eager = student(**inputs).logits
            torch.testing.assert_close(compiled(**inputs).logits, eager, atol=1e-5, rtol=1e-4)


def cached_tensors(value) -> list[torch.Tensor]:
    """The tensors of a cache entry (a tensor, or nested tuples holding tensors)."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in cached_tensors(v)] if isinstance(value, tuple) else []


def same_objects(found: list, expected: list) -> bool:
    return len(found) == len(expected) and all(a is b for a, b in zip(found, expected))


def test_capturing_a_graph_leaves_the_eager_caches_alone():
    """torch.export reads and writes none of the Python-side caches: the products cached by an eager
    forward are the same objects afterwards, and eager outputs are unchanged."""
    student, _ = decompose(tiny_model("bert", "sequence_classification"), "tucker", rank=8, layer_rank=2)
    inputs = tiny_inputs()
    with torch.no_grad():
        before = student(**inputs).logits
    bank = bank_of(student)
    memo = {key: cached_tensors(value) for key, value in bank._memo.items()}
    assert memo, "an eager no-grad forward caches its products"
    program = torch.export.export(student, (), dict(inputs))
    # torch.export hands back the module's dicts and tuples as copies; the tensors in them are ours
    assert bank._memo.keys() == memo.keys()
    assert all(same_objects(cached_tensors(bank._memo[k]), v) for k, v in memo.items())
    assert bank._latest.entry is None
    with torch.no_grad():
        torch.testing.assert_close(student(**inputs).logits, before, atol=0, rtol=0)
        torch.testing.assert_close(program.module()(**inputs).logits, before, atol=1e-5, rtol=1e-4)


def test_onnx_export_of_a_bert_classifier_student_runs_in_onnxruntime_as_the_student(tmp_path):
    """The exported directory's own tokenizer feeds its graph (the tensors the tokenizer makes are the
    graph's inputs) on two batches of other shapes than the export traced and checked."""
    from transformers import AutoTokenizer

    model_dir = student_dir(tmp_path, "bert", "sequence_classification")
    out = tmp_path / "onnx"
    record = export_to_dir(model_dir, out, "onnx")
    student = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(out)
    graph = session(out / "model.onnx")
    assert [i.name for i in graph.get_inputs()] == tokenizer.model_input_names == ["input_ids", "attention_mask"]
    rng = np.random.default_rng(0)
    for batch, words in ((1, 9), (4, 30)):
        texts = [" ".join(f"w{i}" for i in rng.integers(3, 96, rng.integers(2, words + 1))) for _ in range(batch)]
        encoded = tokenizer(texts, padding=True, return_tensors="np")
        (logits,) = graph.run(["logits"], dict(encoded))
        with torch.no_grad():
            expected = student(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()
        assert logits.shape == (batch, 2) and np.abs(logits - expected).max() < TOLERANCE
    written = json.loads((out / "export.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert written["decomposed"] and written["architecture"] == "BertForSequenceClassification"
    assert written["inputs"]["input_ids"] == ["batch", "sequence"] and written["outputs"]["logits"] == ["batch", 2]
    assert 0 <= written["check"]["max_abs_diff"] <= TOLERANCE and len(written["check"]["cases"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "bert"
    assert (out / "tokenizer.json").is_file()


def test_a_llama_student_exports_with_its_kv_cache_and_decodes_as_the_student(tmp_path):
    """Greedy decoding in onnxruntime (prompt with an empty cache, then one token per step feeding the
    present keys and values back) gives the student's tokens and logits."""
    model_dir = student_dir(tmp_path, "llama", "causal_lm")
    out = tmp_path / "onnx"
    record = export_to_dir(model_dir, out, "onnx")
    assert [c["past_sequence"] for c in record["check"]["cases"]] == [0, 0, 9, 5]
    student = load_model(model_dir)
    graph = session(out / "model.onnx")
    layers = student.config.num_hidden_layers
    kv_heads, head_dim = student.config.num_key_value_heads, student.config.head_dim
    prompt = tiny_inputs(2, 6, pad=False)["input_ids"]
    with torch.no_grad():
        generated = student.generate(
            prompt, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    past = {
        f"past.{i}.{p}": np.zeros((2, kv_heads, 0, head_dim), np.float32)
        for i in range(layers)
        for p in ("key", "value")
    }
    ids, tokens = prompt.numpy(), []
    for step in range(4):
        length = past["past.0.key"].shape[2]
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((2, length + ids.shape[1]), np.int64),
            "position_ids": np.broadcast_to(np.arange(length, length + ids.shape[1]), ids.shape).copy(),
            **past,
        }
        logits, *present = graph.run(None, feed)
        assert np.abs(logits[:, -1] - generated.logits[step].numpy()).max() < TOLERANCE
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        tokens.append(ids)
        past = dict(zip(past, present))
    assert np.array_equal(np.concatenate(tokens, 1), generated.sequences[:, 6:].numpy())


def test_dense_export_equals_the_student_and_loads_without_tensorslim(tmp_path):
    model_dir = student_dir(tmp_path, "bert", "sequence_classification")
    out = tmp_path / "dense"
    record = export_to_dir(model_dir, out, "dense")
    assert record["check"]["max_abs_diff"] <= TOLERANCE
    inputs = tiny_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.save((type(model).__name__, logits, "tensorslim" in sys.modules), {str(tmp_path / "logits.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    name, logits, imported = torch.load(tmp_path / "logits.pt")
    assert name == "BertForSequenceClassification" and not imported
    with torch.no_grad():
        expected = load_model(model_dir)(**inputs).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_an_export_that_differs_from_the_model_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    model_dir = student_dir(tmp_path, "bert", "base")
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: [o + 1e-3 for o in run(self, *a, **k)])
    with pytest.raises(TensorslimError, match=r"differs from the model by 0\.001 in last_hidden_state") as caught:
        export_to_dir(model_dir, tmp_path / "onnx", "onnx")
    assert "nothing was written" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]


@pytest.mark.slow
def test_the_7x_minilm_student_exports_to_onnx_within_the_tolerance(real_teacher_dir, tmp_path):
    """The docs/results.md 7x student of the packaged MiniLM (base model, as packaged)."""
    student = tmp_path / "student"
    decompose_to_dir(real_teacher_dir, student, "tucker", layer_rank=72, budget=1516690)
    record = export_to_dir(student, tmp_path / "onnx", "onnx")
    assert record["inputs"]["token_type_ids"] == ["batch", "sequence"]
    assert record["check"]["max_abs_diff"] <= TOLERANCE


def test_the_fastest_export_merges_what_is_cheaper_dense_and_equals_the_student(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_model("llama", "causal_lm").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    decompose_to_dir(teacher, tmp_path / "student", "lowrank", rank=20)
    record = export_to_dir(tmp_path / "student", tmp_path / "fastest", "fastest")
    # by hand (tests/test_merge_faster.py): at rank 20, q and o cost 20 x (32 + 32) = 1280 multiply-adds per
    # token factored against 32 x 32 = 1024 dense; k, v (480 < 512) and the FFN (2240 < 2560) stay factored
    assert (record["merged"], record["factored"]) == (4, 10)
    assert record["macs_per_token"] == {"before": 2 * 10240, "after": 2 * 9728}
    assert record["check"]["max_abs_diff"] <= TOLERANCE
    section = json.loads((tmp_path / "fastest" / "config.json").read_text())["quantization_config"]
    assert sorted(section["merged"]) == [f"{layer}.self_attn.{p}_proj" for layer in range(2) for p in "oq"]
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = load_model(tmp_path / "student")(**inputs).logits
        got = load_model(tmp_path / "fastest")(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_fastest_export_of_a_dense_model_is_refused_and_writes_nothing(tmp_path):
    tiny_model("llama", "causal_lm").save_pretrained(tmp_path / "dense")
    with pytest.raises(TensorslimError, match="not a decomposed student"):
        export_to_dir(tmp_path / "dense", tmp_path / "fastest", "fastest")
    assert not (tmp_path / "fastest").exists()
