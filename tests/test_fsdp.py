"""FSDP: the decomposed student trains sharded as on one process (torch's FSDP2 on CPU gloo; the
Trainer's --fsdp needs GPUs, see docs/training.md), and FSDP checkpoints verify for --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from tensorslim.compress.api import decompose_to_dir
from tensorslim.train import run_dir

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_a_sharded_student_trains_like_one_process(tmp_path):
    import fsdp_worker
    from test_distill_llm import save_llama

    teacher = save_llama(tmp_path / "teacher", initializer_range=0.2)
    decompose_to_dir(teacher, tmp_path / "student", method="tucker", rank=16, layer_rank=2)
    out = tmp_path / "sharded.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(TESTS / "fsdp_worker.py"), str(teacher), str(tmp_path / "student"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0 and out.is_file(), result.stderr[-3000:]
    reference_teacher, reference = fsdp_worker.load(teacher, tmp_path / "student")
    losses = fsdp_worker.train(reference, reference_teacher, fsdp_worker.batch())
    assert losses[-1] < losses[0]
    sharded, single = load_file(out), reference.state_dict()
    assert sharded.keys() == single.keys()
    for key, value in sharded.items():
        torch.testing.assert_close(value, single[key], rtol=0, atol=1e-5)


def checkpoint(path: Path, sharded: bool) -> Path:
    """A checkpoint laid out as the Trainer writes one under FSDP: full state dict (model.safetensors,
    pytorch_model_fsdp.bin, optimizer.bin) or sharded (pytorch_model_fsdp_0/, optimizer_0/)."""
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    weights = {"w": torch.ones(3, 2)}
    torch.save({"lr": 0.1}, path / "scheduler.pt")
    if sharded:
        dcp.save(weights, checkpoint_id=path / "pytorch_model_fsdp_0", no_dist=True)
        dcp.save({"state": torch.zeros(2)}, checkpoint_id=path / "optimizer_0", no_dist=True)
    else:
        save_file(weights, path / "model.safetensors")
        torch.save(weights, path / "pytorch_model_fsdp.bin")
        torch.save({"state": {}}, path / "optimizer.bin")
    return path


@pytest.mark.parametrize(
    "sharded, damage, problem",
    [
        (False, None, None),
        (False, "optimizer.bin", "optimizer.bin is truncated"),
        (False, "pytorch_model_fsdp.bin", "pytorch_model_fsdp.bin is truncated"),
        (True, None, None),
        (True, "optimizer_0/.metadata", "optimizer_0/ has no .metadata"),
        (True, "pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/ has no .metadata"),
    ],
)
def test_fsdp_checkpoints_verify_and_torn_ones_are_named(tmp_path, sharded, damage, problem):
    path = checkpoint(tmp_path / "checkpoint-2", sharded)
    if damage and damage.endswith(".metadata"):
        (path / damage).unlink()
    elif damage:
        data = (path / damage).read_bytes()
        (path / damage).write_bytes(data[: len(data) // 2])
    found = run_dir.checkpoint_problem(path)
    assert found is None if problem is None else problem in found
