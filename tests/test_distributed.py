"""DDP through transformers' Trainer: `torchrun --nproc_per_node=2` (gloo, CPU) gives the same
training as one process with the same global batch.

Deterministic data order (--train_sampling_strategy sequential), no dropout, fixed-length
padding (--pad-to-max-length, so every worker's loss is averaged over equal shapes). Then the
2-worker run's gradient (the mean of the workers' gradients) equals the 1-process gradient up to
float rounding; after 4 AdamW steps the final weights must agree within atol 2e-5 and each step's logged
loss within rel 1e-4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from glue_subset import make_glue_subset
from tensorslim.train.pretraining_data import load_inputs
from test_distill_general import TEXT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

COMMON = [
    "--max_steps",
    "4",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "4",
    "--logging_steps",
    "1",
    "--train_sampling_strategy",
    "sequential",
    "--pad-to-max-length",
    "--learning_rate",
    "1e-3",
    "--dataloader_num_workers",
    "0",
    "--seed",
    "7",
]


def tiny(path: Path, tokenizer, head: str, seed: int, layers: int = 2) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config) if head == "mlm" else BertForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(args: list[str], nproc: int, tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    if nproc == 1:
        command = [sys.executable, "-m", "tensorslim.cli", *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "tensorslim.cli",
            *args,
            "--ddp_backend",
            "gloo",
        ]  # --use_cpu is the default without GPUs
    process = subprocess.Popen(
        command, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its workers
        process.communicate()
        raise
    errors = [line for line in stderr.splitlines() if "Error" in line or "error" in line]
    assert process.returncode == 0, "\n".join(errors[-12:]) + stderr[-1500:]


def compare(single: Path, double: Path) -> None:
    a, b = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-5)
    # per-step losses as logged (the Trainer averages them over workers); `train_loss` is worker 0's own
    logs = [
        json.loads((p / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        for p in (single, double)
    ]
    losses = [[entry["loss"] for entry in log if "loss" in entry] for log in logs]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_task_distillation_two_workers_match_one(tmp_path, tokenizer, shared_data):
    glue = make_glue_subset(shared_data, tmp_path / "glue")
    teacher = tiny(tmp_path / "teacher", tokenizer, "cls", 0)
    student = tiny(tmp_path / "student", tokenizer, "cls", 1, layers=1)
    base = [
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
        "1",
        *COMMON,
    ]
    run([*base, "--out", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1, tmp_path)
    run([*base, "--out", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2, tmp_path)
    compare(tmp_path / "one" / "stage1", tmp_path / "two" / "stage1")


def test_general_distillation_two_workers_match_one(tmp_path, tokenizer):
    from tensorslim.data.pregenerate import PregenerateConfig, pregenerate

    teacher = tiny(tmp_path / "teacher", tokenizer, "mlm", 0)
    student = tiny(tmp_path / "student", tokenizer, "mlm", 1)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXT * 16) + "\n")
    data = pregenerate(
        [tmp_path / "corpus.txt"],
        teacher,
        tmp_path / "data",
        PregenerateConfig(epochs=1, max_seq_len=32, docs_per_shard=4),
    )
    # 32 sequences = exactly the 4 global batches of 8: no partial batch at an epoch end, where one
    # process and two (which pad the last batch evenly) legitimately differ
    assert len(load_inputs(data)) >= 32
    base = [
        "distill",
        "general",
        "--teacher",
        str(teacher),
        "--student",
        str(student),
        "--data",
        str(data),
        "--max-train-samples",
        "32",
        *COMMON,
    ]
    run([*base, "--out", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1, tmp_path)
    run([*base, "--out", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2, tmp_path)
    compare(tmp_path / "one", tmp_path / "two")


def test_causal_lm_healing_two_workers_match_one(tmp_path):
    """A decomposed tiny Llama healed on packed text (token KL): 2 DDP workers = 1 process."""
    from tensorslim.compress.api import decompose_to_dir
    from test_distill_llm import save_llama, write_text

    teacher = save_llama(tmp_path / "teacher", initializer_range=0.2)
    decompose_to_dir(teacher, tmp_path / "student", method="tucker", rank=16, layer_rank=2)
    corpus = write_text(tmp_path / "corpus.txt", 40)
    base = ["distill", "general", "--teacher", str(teacher), "--student", str(tmp_path / "student")]
    base += ["--corpus", str(corpus), "--seq-length", "16", "--max-train-samples", "32", *COMMON]
    run([*base, "--out", str(tmp_path / "one"), "--per_device_train_batch_size", "8"], 1, tmp_path)
    run([*base, "--out", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], 2, tmp_path)
    compare(tmp_path / "one", tmp_path / "two")
