"""Every family of `tensorslim.families` on tiny random configs: decompose, full rank == teacher for the
base model and each head, export == student, save and load through transformers, attention scores,
one distillation step, and for decoders KV-cached generation. docs/families.md lists these columns."""

from __future__ import annotations

import copy

import pytest
import torch

from tensorslim.compress.api import decompose, export_dense, kind_defaults
from tensorslim.compress.factored import FactoredProjection
from tensorslim.compress.inplace import grouping, layout, targets
from tensorslim.compress.loading import HEADS, load_model
from tensorslim.decomposition.methods import get_method
from tensorslim.distill.config import DistillationConfig
from tensorslim.distill.teacher import forward_features
from tensorslim.families import FAMILIES, SUPPORTED_MODEL_TYPES, get_family
from tiny_models import DECODERS, ENCODERS, TINY, tiny_config, tiny_inputs, tiny_model, tiny_tokenizer

HEADS_OF = {
    t: (("base", "causal_lm") if t in DECODERS else ("base", "sequence_classification", "masked_lm")) for t in TINY
}
CASES = [(t, h) for t in TINY for h in HEADS_OF[t]]


def output(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def test_every_model_type_of_the_table_has_a_tiny_model_and_vice_versa():
    assert set(TINY) == set(SUPPORTED_MODEL_TYPES)
    assert {get_family(tiny_config(t)).name for t in TINY} == {f.name for f in FAMILIES}


@pytest.mark.parametrize("model_type,head", CASES)
def test_full_rank_equals_the_teacher(model_type, head):
    """lowrank at the hidden size (an SVD per slice: real rotations, every group exact) and tucker with
    every slice kept: the student is the teacher to 1e-4, in the teacher's own class."""
    teacher = tiny_model(model_type, head)
    inputs = tiny_inputs()
    reference = output(teacher, inputs)
    D = teacher.config.hidden_size
    keywords = grouping(kind_defaults(get_method("tucker"), teacher.config))  # decoders: layer windows
    every_slice = max(g.num_slices for g in layout(teacher, "all", **keywords)[0].values())
    for method, options in (("lowrank", {"rank": D}), ("tucker", {"rank": D, "layer_rank": every_slice})):
        student, record = decompose(copy.deepcopy(teacher), method, **options)
        assert type(student) is type(teacher)
        assert all(isinstance(m, FactoredProjection) for _, m, _ in targets(student))
        torch.testing.assert_close(output(student, inputs), reference, atol=1e-4, rtol=1e-4)
        assert record["relative_error"] < 1e-5


@pytest.mark.parametrize("model_type,head", CASES)
def test_export_equals_student_and_save_load_is_identical(model_type, head, tmp_path):
    student, _ = decompose(tiny_model(model_type, head), "tucker", rank=12, layer_rank=3)
    inputs = tiny_inputs()
    ours = output(student, inputs)
    dense = export_dense(student)
    assert type(dense) is type(student) and not any(isinstance(m, FactoredProjection) for m in dense.modules())
    torch.testing.assert_close(output(dense, inputs), ours, atol=1e-5, rtol=1e-4)
    student.save_pretrained(tmp_path)
    loaded = HEADS[head].from_pretrained(tmp_path)
    assert type(loaded) is type(student)
    torch.testing.assert_close(output(loaded, inputs), ours, atol=0, rtol=0)
    assert type(load_model(tmp_path)) is type(student)  # tensorslim's verified loader agrees


def _eager_probabilities(model, inputs):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(**inputs, output_attentions=True).attentions


@pytest.mark.parametrize("model_type", list(TINY))
def test_attention_scores_are_the_pre_softmax_logits_of_the_models_own_attention(model_type):
    """softmax(scores + mask) equals the attention probabilities the model's eager implementation returns
    (after RoPE, with GQA keys repeated, GPT-2's fused c_attn split), for teacher and student alike."""
    teacher = tiny_model(model_type)
    student, _ = decompose(copy.deepcopy(teacher), "tucker", rank=12, layer_rank=3)
    inputs = tiny_inputs()
    causal = get_family(teacher.config).causal
    for model in (teacher, student.eval()):
        with torch.no_grad():
            features = forward_features(model, inputs, frozenset({"attention_scores"}), [0, 1])
        probabilities = _eager_probabilities(model, inputs)
        assert len(features.attention_scores) == len(probabilities) == 2
        T = inputs["input_ids"].shape[1]
        keep = inputs["attention_mask"][:, None, None, :].bool()
        if causal:
            keep = keep & torch.ones(T, T, dtype=torch.bool).tril()
        for scores, probs in zip(features.attention_scores, probabilities):
            local = (probs > 0) | ~keep  # ModernBERT's local layers attend to a window only
            expected = torch.softmax(scores.masked_fill(~(keep & local), float("-inf")), dim=-1)
            rows = keep.any(-1, keepdim=True).expand_as(expected)
            torch.testing.assert_close(expected[rows], probs[rows], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", list(TINY))
def test_one_distillation_step_trains_the_factors(model_type, tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from tensorslim.distill.trainer import DistillationTrainer

    head = "causal_lm" if model_type in DECODERS else "masked_lm"
    teacher = tiny_model(model_type, head)
    student, _ = decompose(copy.deepcopy(teacher), "tucker", rank=12, layer_rank=3)
    inputs = tiny_inputs(batch=4)
    data = Dataset.from_dict({k: v.tolist() for k, v in inputs.items()})
    before = {n: p.detach().clone() for n, p in student.base_model.tensorslim_factors.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        learning_rate=1e-2,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    config = DistillationConfig(losses=["attention", "hidden"], layer_map="uniform")
    trainer = DistillationTrainer(
        model=student.train(), args=args, train_dataset=data, teacher=teacher, distill_config=config
    )
    metrics = trainer.train().metrics
    assert metrics["train_loss"] > 0 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    after = dict(student.base_model.tensorslim_factors.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("model_type", DECODERS)
def test_generation_with_the_kv_cache_gives_the_tokens_of_generation_without_it(model_type):
    student, _ = decompose(tiny_model(model_type, "causal_lm"), "tucker", rank=12, layer_rank=3)
    prompt = tiny_inputs(batch=2, pad=False)["input_ids"][:, :5]
    with torch.no_grad():
        cached = student.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = student.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_perplexity_of_the_student_equals_its_exports(model_type):
    """What `tensorslim evaluate --perplexity` scores, on a causal-LM student and its dense export."""
    from tensorslim.evaluate.perplexity import perplexity

    student, _ = decompose(tiny_model(model_type, "causal_lm"), "tucker", rank=12, layer_rank=3)
    text = " ".join(f"w{3 + (7 * i) % 90}" for i in range(80))
    ours = perplexity(student, tiny_tokenizer(), text, seq_length=16)
    theirs = perplexity(export_dense(student), tiny_tokenizer(), text, seq_length=16)
    assert ours["windows"] == 5 and ours["perplexity"] > 1
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5)


@pytest.mark.parametrize("model_type", ENCODERS)
def test_classifier_predictions_of_the_evaluation_path_equal_its_export(model_type):
    """`train.evaluate.predict` (what `tensorslim evaluate` scores) on padded batches of a classifier
    student gives its dense export's logits."""
    from datasets import Dataset

    from tensorslim.train.evaluate import predict

    student, _ = decompose(tiny_model(model_type, "sequence_classification"), "tucker", rank=12, layer_rank=3)
    tokenizer = tiny_tokenizer()
    texts = ["w3 w4 w5 w6 w7", "w9 w10", "w11 w12 w13 w14 w15 w16 w17", "w20 w21 w22"]
    data = Dataset.from_dict(dict(tokenizer(texts)))
    ours = predict(student, data, tokenizer, batch_size=3)
    theirs = predict(export_dense(student), data, tokenizer, batch_size=3)
    assert ours.shape == (4, student.config.num_labels)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", list(TINY))
def test_onnx_export_runs_in_onnxruntime_as_the_student(model_type, tmp_path):
    """`tensorslim export --format onnx` of a student (an encoder's classifier; a decoder's causal LM with
    its KV cache), which checks itself on several shapes; the test feeds the file once more itself."""
    import numpy as np
    import onnxruntime as ort

    from tensorslim.compress.api import decompose_to_dir
    from tensorslim.compress.export import export_to_dir

    head = "causal_lm" if model_type in DECODERS else "sequence_classification"
    tiny_model(model_type, head).save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    decompose_to_dir(tmp_path / "teacher", tmp_path / "student", "tucker", rank=12, layer_rank=3)
    record = export_to_dir(tmp_path / "student", tmp_path / "onnx", "onnx")
    assert record["check"]["max_abs_diff"] <= 1e-4
    assert any(name.startswith("past.") for name in record["inputs"]) == (model_type in DECODERS)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = tiny_inputs(batch=2, length=11, pad=model_type not in DECODERS)
    feed = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past."):  # an empty cache: (batch, heads, 0, head dim)
            feed[spec.name] = np.zeros((2, spec.shape[1], 0, spec.shape[3]), np.float32)
        elif spec.name == "position_ids":
            feed[spec.name] = np.tile(np.arange(11), (2, 1))
        elif spec.name == "token_type_ids":
            feed[spec.name] = np.zeros((2, 11), np.int64)
        else:
            feed[spec.name] = inputs[spec.name].numpy()
    logits = session.run(["logits"], feed)[0]
    torch.testing.assert_close(
        torch.from_numpy(logits), output(load_model(tmp_path / "student"), inputs), atol=1e-4, rtol=0
    )
