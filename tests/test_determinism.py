"""Same seed and inputs -> the same training losses and weights on CPU, step by step; another seed
-> different ones (so the comparison can fail). GPU kernels are not bit-exact: see docs/training.md."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert
from glue_subset import make_glue_subset
from tensorslim.cli import main


def losses(out) -> list[tuple[int, float]]:
    history = json.loads((out / "tensorslim_training.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


@pytest.mark.slow
def test_task_distillation_is_reproducible_on_cpu(tmp_path, tokenizer, shared_data):
    glue = make_glue_subset(shared_data, tmp_path / "glue")
    teacher = make_tiny_bert(tmp_path / "teacher", tokenizer, head="cls", seed=0)
    student = make_tiny_bert(tmp_path / "student", tokenizer, seed=1)
    command = [
        "distill",
        "task",
        "--teacher",
        str(teacher),
        "--student",
        str(student),
        "--task",
        "SST-2",
        "--glue-dir",
        str(glue),
        "--max_steps",
        "6",
        "--logging_steps",
        "1",
        "--save_steps",
        "100",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    runs = {name: tmp_path / name for name in ("a", "b", "other_seed")}
    assert main([*command, "--out", str(runs["a"])]) == 0
    assert main([*command, "--out", str(runs["b"])]) == 0
    assert main([*command, "--seed", "7", "--out", str(runs["other_seed"])]) == 0

    a, b, other = (losses(runs[name]) for name in ("a", "b", "other_seed"))
    assert len(a) == 6 and a == b  # every step's loss, exactly
    assert other != a
    weights_a, weights_b = load_file(runs["a"] / "model.safetensors"), load_file(runs["b"] / "model.safetensors")
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
