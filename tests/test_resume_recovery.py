"""What a kill or a bad disk leaves behind, laid out by hand, then resumed (issue 6, reliability):
a torn or corrupt checkpoint is never resumed from, an interrupted final save is completed rather
than lost, and half-written files of pregenerate and augment are cleaned up. Signals sent to real
processes at random kill points are in tests/test_interrupt.py.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

import interrupt_cases as cases
from conftest import digest
from interrupt_cases import LAST, PREVIOUS, STEPS, assert_same_files, assert_same_model
from tensorslim.cli import main as cli_main
from tensorslim.data.pregenerate import PregenerateConfig, pregenerate
from tensorslim.io import write_marker
from tensorslim.train import run_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pregenerate_case(tmp_path_factory, real_teacher_dir) -> tuple[list[str], dict]:
    return cases.pregenerate_case(tmp_path_factory.mktemp("pregenerate"), real_teacher_dir)


@pytest.fixture(scope="module")
def augment_case(tmp_path_factory, shared_data, tiny_bert_dir) -> tuple[list[str], bytes, bytes]:
    return cases.augment_case(tmp_path_factory.mktemp("augment"), shared_data, tiny_bert_dir)


@pytest.fixture(scope="module")
def general_case(tmp_path_factory, tiny_bert_dir, tokenizer) -> tuple[list[str], Path]:
    return cases.general_case(tmp_path_factory.mktemp("general"), tiny_bert_dir, tokenizer)


def unfinished_run(reference: Path, out: Path, checkpoints: tuple[str, ...]) -> Path:
    """`out` as an interrupted run left it: the reference run's `checkpoints`, no final model."""
    (out / run_dir.CHECKPOINTS).mkdir(parents=True)
    write_marker(out, "distill general")  # as `run_dir.prepare` marks a run it starts
    for name in checkpoints:
        shutil.copytree(reference / run_dir.CHECKPOINTS / name, out / run_dir.CHECKPOINTS / name)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


#: How a kill (or a bad disk) can leave a checkpoint, and what `checkpoint_problem` then says.
CORRUPTIONS = {
    "truncated-weights": (lambda c: truncate(c / "model.safetensors"), "model.safetensors holds"),
    "no-optimizer": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "truncated-optimizer": (lambda c: truncate(c / "optimizer.pt", 0.9), "optimizer.pt is truncated"),
    "garbage-state": (
        lambda c: (c / "trainer_state.json").write_text('{"global_step": 1'),
        "trainer_state.json is unreadable",
    ),
    "no-state": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_resume_falls_back_from_a_corrupt_newest_checkpoint(tmp_path, general_case, caplog, corruption):
    args, reference = general_case
    out = unfinished_run(reference, tmp_path / "out", (PREVIOUS, LAST))
    previous, newest = out / run_dir.CHECKPOINTS / PREVIOUS, out / run_dir.CHECKPOINTS / LAST
    corrupt, problem = CORRUPTIONS[corruption]
    corrupt(newest)
    assert problem in run_dir.checkpoint_problem(newest)
    assert run_dir.checkpoint_problem(previous) is None
    assert run_dir.last_complete_checkpoint(out / run_dir.CHECKPOINTS) == previous

    caplog.set_level("INFO")
    assert cli_main([*args, "--out", str(out), "--resume"]) == 0
    assert f"skipping checkpoint {newest}: {problem}" in caplog.text
    assert f"resuming from {previous}" in caplog.text
    assert_same_model(out, reference)
    assert_same_files(out, reference)
    assert run_dir.checkpoint_problem(newest) is None  # written again, whole, when training got there


def test_resume_whose_only_checkpoint_is_corrupt_starts_afresh(tmp_path, general_case, caplog):
    args, reference = general_case
    out = unfinished_run(reference, tmp_path / "out", (PREVIOUS,))
    truncate(out / run_dir.CHECKPOINTS / PREVIOUS / "model.safetensors")
    caplog.set_level("INFO")
    assert cli_main([*args, "--out", str(out), "--resume"]) == 0
    assert "skipping checkpoint" in caplog.text and "starting from the beginning" in caplog.text
    assert_same_model(out, reference)
    assert_same_files(out, reference)


def test_explicit_corrupt_checkpoint_is_refused(tmp_path, general_case, caplog):
    args, reference = general_case
    checkpoint = tmp_path / LAST
    shutil.copytree(reference / run_dir.CHECKPOINTS / LAST, checkpoint)
    (checkpoint / "scheduler.pt").unlink()
    out = tmp_path / "out"
    assert cli_main([*args, "--out", str(out), "--resume_from_checkpoint", str(checkpoint)]) == 2
    assert f"--resume_from_checkpoint {checkpoint} cannot be resumed from: scheduler.pt is missing" in caplog.text
    assert not (out / "config.json").exists()


def test_signal_on_the_last_step_then_resume_takes_no_extra_step(tmp_path, general_case, monkeypatch, caplog):
    from tensorslim.distill.trainer import DistillationTrainer

    args, reference = general_case
    original = DistillationTrainer.training_step

    def training_step(self, *a, **kw):
        if self.state.global_step == STEPS - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a, **kw)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(DistillationTrainer, "training_step", training_step)
        assert cli_main([*args, "--out", str(out)]) == 130
    assert run_dir.last_complete_checkpoint(out / run_dir.CHECKPOINTS).name == LAST
    caplog.set_level("INFO")
    assert cli_main([*args, "--out", str(out), "--resume"]) == 0
    assert "is the last training step; loading it instead of training" in caplog.text
    assert_same_model(out, reference)


def _torn_publish(reference: Path, out: Path, state: str) -> None:
    """Lay out `out` as a process killed inside `run_dir.publish` leaves it (see its steps)."""
    staged = run_dir.staging_dir(out)
    shutil.copytree(reference, staged)  # the complete final model, its checkpoints already moved in
    if state == "moving":  # killed while moving the checkpoints into the staged model
        out.mkdir()
        write_marker(out, "distill general")
        os.replace(staged / run_dir.CHECKPOINTS, out / run_dir.CHECKPOINTS)
    elif state == "moved":  # everything moved, `out` not yet renamed
        out.mkdir()
        write_marker(out, "distill general")
    else:  # "renamed": `out` already renamed to .<out>.old, the staged model not yet renamed to `out`
        old = out.with_name(f".{out.name}.old")
        old.mkdir()
        write_marker(old, "distill general")


@pytest.mark.parametrize("state", ["moving", "moved", "renamed"])
def test_resume_completes_a_final_save_cut_short(tmp_path, general_case, caplog, state):
    args, reference = general_case
    out = tmp_path / "out"
    _torn_publish(reference, out, state)
    caplog.set_level("INFO")
    assert cli_main([*args, "--out", str(out), "--resume"]) == 0
    assert "completing the final save" in caplog.text
    assert f"resuming from {out / run_dir.CHECKPOINTS / LAST}" in caplog.text  # no work lost
    assert_same_model(out, reference)
    assert_same_files(out, reference)  # no staged or old directory left beside it


def test_pregenerate_resume_removes_half_written_files(tmp_path, pregenerate_case, real_teacher_dir, monkeypatch):
    from tensorslim.data.pregenerate import pool as module

    args, reference = pregenerate_case
    corpus = Path(args[args.index("--corpus") + 1])
    config = PregenerateConfig(epochs=2, docs_per_shard=2, format="both")
    original = module.process_shard

    def signalled(task):
        if task[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(task)

    monkeypatch.setattr(module, "process_shard", signalled)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pregenerate([corpus], real_teacher_dir, out, config)
    monkeypatch.undo()
    for stale in (out / "epoch_0" / ".shard_00004.arrow.k2j4.tmp", out / ".epoch_1.json.x9a1.tmp"):
        stale.write_bytes(b"half")  # as a write killed before its rename leaves it
    pregenerate([corpus], real_teacher_dir, out, config, resume=True)
    assert digest(out) == reference


def test_augment_resume_after_a_kill_between_output_and_cleanup(tmp_path, augment_case, monkeypatch):
    args, train, expected = augment_case
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_bytes(train)
    command = [*args, "--glue-dir", str(tmp_path)]
    rmtree = shutil.rmtree

    def killed_before_cleanup(path, ignore_errors=False):
        if not ignore_errors:  # the final removal of train_aug.tsv.partial
            raise KeyboardInterrupt
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_before_cleanup)
    assert cli_main(command) == 130
    monkeypatch.undo()
    task_dir = tmp_path / "SST-2"
    assert (task_dir / "train_aug.tsv.partial").is_dir() and (task_dir / "train_aug.tsv").exists()
    (task_dir / ".train_aug.tsv.q1w2.tmp").write_bytes(b"half")  # a killed earlier assembly's leftover
    assert cli_main([*command, "--resume"]) == 0
    assert (task_dir / "train_aug.tsv").read_bytes() == expected
    assert sorted(p.name for p in task_dir.iterdir()) == ["train.tsv", "train_aug.tsv"]
