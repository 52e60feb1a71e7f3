"""Interrupting real `tensorslim` processes, then resuming them (issue 6, reliability).

pregenerate, augment, distill general and distill task run as subprocesses and get SIGTERM or
SIGINT (graceful: exit code 130, a hint to rerun with --resume, no final output) or SIGKILL (no
cleanup at all) at kill points drawn from a fixed seed: after a pseudo-random amount of progress
(finished shards, chunks, checkpoints) plus a random delay. The same command with --resume must
then end with exactly the output of an uninterrupted run. What a kill leaves on disk (torn
checkpoints, a final save cut short) is laid out by hand in tests/test_resume_recovery.py.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch

import interrupt_cases as cases
from conftest import digest, make_tiny_bert
from glue_subset import make_glue_subset
from interrupt_cases import (
    GRACEFUL,
    STEPS,
    TRAIN_FLAGS,
    KillPoint,
    assert_same_files,
    assert_same_model,
    check_stopped,
    checkpoint_ready,
    interrupt,
)
from tensorslim.cli import main as cli_main
from tensorslim.data.pregenerate import PROGRESS, load_pregenerated
from tensorslim.errors import TensorslimError
from tensorslim.train import run_dir

pytestmark = pytest.mark.usefixtures("one_thread")
SEED = 6  # every kill point below is drawn from it: reproducible, yet not hand-picked
RNG = random.Random(SEED)
#: Checkpoints a training kill point may wait for: the first half, so that most steps remain.
EARLY_CHECKPOINTS = range(2, STEPS // 2 + 1, 2)


def kill_points(plan: list[tuple[str, signal.Signals]], afters, max_delay: float) -> list:
    """One pytest.param per (stage, signal) of `plan`, at a random progress in `afters` plus a random delay."""
    params = []
    for stage, sig in plan:
        point = KillPoint(sig, RNG.choice(afters), round(RNG.uniform(0, max_delay), 3), stage)
        where = f"{stage}:" if stage else ""
        progress = point.after or ""
        params.append(pytest.param(point, id=f"{where}{progress}+{point.delay * 1000:.0f}ms-{sig.name}"))
    return params


# ------------------------------------------------------------------------------ pregenerate


@pytest.fixture(scope="module")
def pregenerate_case(tmp_path_factory, real_teacher_dir) -> tuple[list[str], dict]:
    return cases.pregenerate_case(tmp_path_factory.mktemp("pregenerate"), real_teacher_dir)


def lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except OSError:
        return 0


PREGENERATE_POINTS = [
    pytest.param(param.values[0], workers, id=f"{param.id}-workers{workers}")
    for param, workers in zip(
        kill_points(
            [("", signal.SIGKILL), ("", signal.SIGTERM), ("", signal.SIGINT), ("", signal.SIGKILL)], range(2, 30), 0.05
        ),
        (2, 2, 1, 1),
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("point, workers", PREGENERATE_POINTS)
def test_pregenerate_resumes_to_identical_output(tmp_path, pregenerate_case, point, workers):
    args, reference = pregenerate_case
    out = tmp_path / "out"
    command = [*args, "--out", str(out), "--workers", str(workers)]
    code, stderr = interrupt(command, lambda: lines(out / PROGRESS) >= point.after, point)
    check_stopped(point, code, stderr, out / "pregenerate.json")
    with pytest.raises(TensorslimError, match="unfinished"):
        load_pregenerated(out)
    assert cli_main([*command, "--resume"]) == 0
    assert digest(out) == reference  # the same bytes, and no file left over from the killed run


# ------------------------------------------------------------------------------ augment


@pytest.fixture(scope="module")
def augment_case(tmp_path_factory, shared_data, tiny_bert_dir) -> tuple[list[str], bytes, bytes]:
    return cases.augment_case(tmp_path_factory.mktemp("augment"), shared_data, tiny_bert_dir)


def chunks_done(state: Path) -> int:
    try:
        return len(json.loads(state.read_text())["chunks"])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", kill_points([("", signal.SIGTERM), ("", signal.SIGKILL), ("", signal.SIGINT)], range(1, 14), 0.1)
)
def test_augment_resumes_to_identical_output(tmp_path, augment_case, point):
    args, train, expected = augment_case
    task_dir = tmp_path / "SST-2"
    task_dir.mkdir()
    (task_dir / "train.tsv").write_bytes(train)
    command = [*args, "--glue-dir", str(tmp_path)]
    state = task_dir / "train_aug.tsv.partial" / "state.json"
    code, stderr = interrupt(command, lambda: chunks_done(state) >= point.after, point)
    check_stopped(point, code, stderr, task_dir / "train_aug.tsv")
    assert cli_main([*command, "--resume"]) == 0
    assert (task_dir / "train_aug.tsv").read_bytes() == expected
    assert sorted(p.name for p in task_dir.iterdir()) == ["train.tsv", "train_aug.tsv"]  # nothing half-written left


# ------------------------------------------------------------------------------ distill general


@pytest.fixture(scope="module")
def general_case(tmp_path_factory, tiny_bert_dir, tokenizer) -> tuple[list[str], Path]:
    return cases.general_case(tmp_path_factory.mktemp("general"), tiny_bert_dir, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", kill_points([("", signal.SIGKILL), ("", signal.SIGTERM), ("", signal.SIGINT)], EARLY_CHECKPOINTS, 0.05)
)
def test_distill_general_resumes_to_identical_weights(tmp_path, general_case, point):
    args, reference = general_case
    out = tmp_path / "out"
    command = [*args, "--out", str(out)]
    code, stderr = interrupt(command, checkpoint_ready(out / run_dir.CHECKPOINTS, point.after), point)
    check_stopped(point, code, stderr, out / "config.json")
    if point.sig in GRACEFUL:  # a checkpoint was saved where the run stopped
        last = run_dir.last_complete_checkpoint(out / run_dir.CHECKPOINTS)
        assert last is not None and int(last.name.split("-")[1]) >= point.after
    assert cli_main([*command, "--resume"]) == 0
    assert_same_model(out, reference)
    assert_same_files(out, reference)


# ------------------------------------------------------------------------------ distill task


@pytest.fixture(scope="module")
def task_case(tmp_path_factory, tokenizer, shared_data) -> tuple[list[str], Path]:
    """The command (without --out): SST-2, both stages of STEPS steps; and the uninterrupted run's directory."""
    root = tmp_path_factory.mktemp("task")
    teacher = make_tiny_bert(root / "teacher", tokenizer, head="cls", seed=0)
    student = make_tiny_bert(root / "student", tokenizer, seed=1)
    args = [
        "distill",
        "task",
        "--teacher",
        str(teacher),
        "--student",
        str(student),
        "--task",
        "SST-2",
        "--glue-dir",
        str(make_glue_subset(shared_data, root / "glue")),
        "--stage",
        "both",
        *TRAIN_FLAGS,
    ]
    reference = root / "reference"
    assert cli_main([*args, "--out", str(reference)]) == 0
    return args, reference


TASK_POINTS = [
    *kill_points(
        [("stage1", signal.SIGKILL), ("stage1", signal.SIGINT), ("stage2", signal.SIGTERM), ("stage2", signal.SIGKILL)],
        EARLY_CHECKPOINTS,
        0.05,
    ),
    *kill_points([("between", signal.SIGTERM)], (0,), 0.3),  # after stage 1 is saved: during stage 2's setup
]


@pytest.mark.slow
@pytest.mark.parametrize("point", TASK_POINTS)
def test_distill_task_resumes_to_identical_weights(tmp_path, task_case, point):
    """Kill points in stage 1, in stage 2, and between them (stage 1 saved, stage 2 loading)."""
    args, reference = task_case
    out = tmp_path / "out"
    command = [*args, "--out", str(out)]
    reached = {
        "stage1": checkpoint_ready(out / "stage1" / run_dir.CHECKPOINTS, point.after),
        "between": lambda: (out / "stage1" / "config.json").exists(),
        "stage2": checkpoint_ready(out / run_dir.CHECKPOINTS, point.after),
    }[point.stage]
    code, stderr = interrupt(command, reached, point)
    check_stopped(point, code, stderr, out / "config.json")
    assert run_dir.is_finished(out / "stage1") == (point.stage != "stage1")
    assert cli_main([*command, "--resume"]) == 0
    assert_same_model(out / "stage1", reference / "stage1")
    assert_same_model(out, reference)
    assert_same_files(out, reference)


# ------------------------------------------------------------------------------ torn checkpoints and final saves


def _stop_flag_worker(rank: int, store: str, signalled_rank: int, results) -> None:
    """One of two gloo processes: only `signalled_rank` has had a signal; report what each decides."""
    from tensorslim.signals import GracefulStop
    from tensorslim.train.runner import any_worker_signalled

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        stop = GracefulStop()
        before = any_worker_signalled(stop, torch.device("cpu"))
        if rank == signalled_rank:
            stop.signal = signal.SIGTERM
        results[rank] = (before, any_worker_signalled(stop, torch.device("cpu")), stop.signal)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_workers_agree_to_stop_after_the_same_step(tmp_path):
    """Under DDP a signal that reaches one worker stops every worker after the same step."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_stop_flag_worker, args=(str(tmp_path / "store"), 1, results), nprocs=2, join=True)
    assert dict(results) == {0: (False, True, signal.SIGTERM), 1: (False, True, signal.SIGTERM)}
