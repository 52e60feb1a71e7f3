"""`tensorslim finetune` end to end on small real GLUE data with a tiny BERT."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from glue_subset import make_glue_subset
from tensorslim.cli import main

FAST = [
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "8",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "2",
    "--learning_rate",
    "1e-3",
]


@pytest.fixture(scope="module")
def glue(tmp_path_factory, shared_data):
    return make_glue_subset(shared_data, tmp_path_factory.mktemp("glue"))


def finetune(model, glue, out, *extra, task="SST-2"):
    """`tensorslim finetune` on `model` into `out`; returns the exit code."""
    args = ["finetune", "--model", str(model), "--task", task, "--glue-dir", str(glue), "--out", str(out)]
    return main([*args, *extra])


def test_finetune_sst2_gives_a_labelled_classifier(tmp_path, tiny_bert_dir, glue):
    out = tmp_path / "teacher"
    assert finetune(tiny_bert_dir, glue, out, *FAST, task="sst2") == 0
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "0", 1: "1"} and model.config.num_labels == 2
    assert AutoTokenizer.from_pretrained(out).vocab_size == 30522
    info = json.loads((out / "tensorslim_training.json").read_text())
    assert (info["task"], info["max_seq_length"], info["train_examples"], info["global_step"]) == ("SST-2", 64, 48, 4)
    assert (
        0.0 <= info["metrics"]["eval_accuracy"] <= 1.0
        and info["metrics"]["eval_score"] == info["metrics"]["eval_accuracy"]
    )
    # checkpoints were written at --save_steps
    assert (out / "checkpoints" / "checkpoint-4" / "model.safetensors").is_file()
    # an existing run is neither overwritten nor silently continued
    assert finetune(tiny_bert_dir, glue, out, *FAST) == 2
    # --max_steps raised and --resume continues from checkpoint-4 to step 6
    assert finetune(tiny_bert_dir, glue, out, "--resume", *FAST[2:], "--max_steps", "6") == 0
    assert json.loads((out / "tensorslim_training.json").read_text())["global_step"] == 6


def test_finetune_stsb_is_regression(tmp_path, tiny_bert_dir, glue):
    out = tmp_path / "stsb"
    assert finetune(tiny_bert_dir, glue, out, *FAST, task="STS-B") == 0
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    metrics = json.loads((out / "tensorslim_training.json").read_text())["metrics"]
    assert {"eval_pearson", "eval_spearman", "eval_score"} <= set(metrics)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[101, 2000, 102]])).logits.shape == (1, 1)


def test_bad_inputs_are_clear_errors(tmp_path, tiny_bert_dir, glue, caplog):
    assert finetune(tmp_path / "nothing", glue, tmp_path / "o1", *FAST) == 2
    assert "does not exist" in caplog.text and "save_pretrained" in caplog.text
    assert finetune(tiny_bert_dir, glue, tmp_path / "o2", *FAST, task="SST-3") == 2
    assert "unknown GLUE task" in caplog.text
    assert finetune(tiny_bert_dir, glue, tmp_path / "o3", "--output_dir", "x", *FAST) == 2
    assert finetune(tiny_bert_dir, glue, tmp_path / "o4", "--no_such_flag", "1") == 2
    assert "unknown flag" in caplog.text
