"""SIGTERM mid-run -> a checkpoint and exit code 130; --resume -> the same final weights as an
uninterrupted run with the same seed (dropout on, shuffled data, warm-up + decay schedule)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert
from glue_subset import make_glue_subset
from tensorslim.cli import main
from tensorslim.distill.trainer import DistillationTrainer


@pytest.fixture(scope="module")
def glue(tmp_path_factory, shared_data):
    return make_glue_subset(shared_data, tmp_path_factory.mktemp("glue"))


def signal_at_step(monkeypatch, step: int, signum=signal.SIGTERM):
    """Make the process signal itself during optimizer step `step` (1-based), as `kill` would."""
    original = DistillationTrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step - 1:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", training_step)


def test_interrupt_and_resume_gives_identical_weights(tmp_path, tokenizer, glue, monkeypatch, caplog):
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
        "--stage",
        "2",
        "--max_steps",
        "8",
        "--save_steps",
        "100",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "2",
    ]

    assert main([*command, "--out", str(tmp_path / "straight")]) == 0

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        signal_at_step(patch, 3)
        assert main([*command, "--out", str(interrupted)]) == 130
    assert "--resume" in caplog.text
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-3"
    ]
    assert not (interrupted / "config.json").exists()  # no final model from an unfinished run
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    assert main([*command, "--out", str(interrupted), "--resume"]) == 0
    assert json.loads((interrupted / "tensorslim_training.json").read_text())["global_step"] == 8
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
    assert not torch.equal(
        a["bert.encoder.layer.0.attention.self.query.weight"],
        load_file(student / "model.safetensors")["bert.encoder.layer.0.attention.self.query.weight"],
    )
