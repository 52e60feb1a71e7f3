"""Interrupting real `tensorslim` processes, then resuming them (issue 6, reliability).

pregenerate, augment, distill general and distill task run as subprocesses and get SIGTERM or
SIGINT (graceful: exit code 130, a hint to rerun with --resume, no final output) or SIGKILL (no
cleanup at all) at kill points drawn from a fixed seed: after a pseudo-random amount of progress
(finished shards, chunks, checkpoints) plus a random delay. The same command with --resume must
then end with exactly the output of an uninterrupted run. Also: a torn or corrupt checkpoint is
never resumed from, and an interrupted final save is completed rather than lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert
from glue_subset import make_glue_subset
from tensorslim.cli import main as cli_main
from tensorslim.data.pregenerate import PROGRESS, PregenerateConfig, load_pregenerated, pregenerate
from tensorslim.errors import TensorslimError
from tensorslim.io import write_marker
from tensorslim.train import run_dir

SEED = 6  # every kill point below is drawn from it: reproducible, yet not hand-picked
RNG = random.Random(SEED)
GRACEFUL = (signal.SIGTERM, signal.SIGINT)
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
#: Tiny training runs (~30 ms a step): a checkpoint every 2 steps, the last 2 kept (the default).
STEPS = 16
TRAIN_FLAGS = [
    "--max_steps",
    str(STEPS),
    "--save_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--learning_rate",
    "1e-3",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]
#: Checkpoints a training kill point may wait for: the first half, so that most steps remain.
EARLY_CHECKPOINTS = range(2, STEPS // 2 + 1, 2)
LAST, PREVIOUS = f"checkpoint-{STEPS}", f"checkpoint-{STEPS - 2}"


@dataclass(frozen=True)
class KillPoint:
    """Send `sig` `delay` seconds after `after` units of progress (in `stage`, for distill task)."""

    sig: signal.Signals
    after: int
    delay: float
    stage: str = ""


def kill_points(plan: list[tuple[str, signal.Signals]], afters, max_delay: float) -> list:
    """One pytest.param per (stage, signal) of `plan`, at a random progress in `afters` plus a random delay."""
    params = []
    for stage, sig in plan:
        point = KillPoint(sig, RNG.choice(afters), round(RNG.uniform(0, max_delay), 3), stage)
        where = f"{stage}:" if stage else ""
        progress = point.after or ""
        params.append(pytest.param(point, id=f"{where}{progress}+{point.delay * 1000:.0f}ms-{sig.name}"))
    return params


# ------------------------------------------------------------------------------ the kill helper


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                found.append(int(entry.name))
    return found


def interrupt(args: list[str], reached: Callable[[], bool], point: KillPoint, timeout: float = 300) -> tuple[int, str]:
    """Run `python -m tensorslim.cli <args>` in its own process group; once `reached()` holds, wait
    `point.delay` seconds and send `point.sig`. Returns (returncode, stderr).

    Fails when the process ends before the kill point, or leaves live processes behind it.
    """
    missed, left = None, []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:  # a full pipe would block the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorslim.cli", *args],
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not reached() and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(point.delay)
            if proc.poll() is not None:
                missed = f"the process ended (code {proc.returncode}) before kill point {point}"
            elif time.monotonic() > deadline + point.delay:
                missed = f"kill point {point} not reached in {timeout} s"
            else:
                proc.send_signal(point.sig)
                proc.wait(timeout=timeout)
                deadline = time.monotonic() + 10
                while group_members(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                left = group_members(proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        err.seek(0)
        stderr = err.read()
    assert missed is None, f"{missed}:\n{stderr[-3000:]}"
    assert not left, f"processes {left} still ran 10 s after {point.sig.name} ended the main process"
    return proc.returncode, stderr


def check_stopped(point: KillPoint, returncode: int, stderr: str, final: Path) -> None:
    """Graceful signals: exit 130 and the hint to resume; SIGKILL: killed. Either way no `final` output."""
    if point.sig in GRACEFUL:
        assert returncode == 130, stderr[-3000:]
        assert "--resume" in stderr
    else:
        assert returncode == -signal.SIGKILL, stderr[-3000:]
    assert not final.exists(), f"{final} exists after an interrupted run"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_corpus(path: Path, docs: int, seed: int = 0) -> Path:
    """Random sentences, one a line, a blank line between documents."""
    words = (
        "the river house green small old city water light people music north king song paper stone "
        "crustaceans exoskeleton planktonic conspicuous asymmetrical centimetres"
    ).split()
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(docs):
            for _ in range(rng.randint(4, 12)):
                handle.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + ".\n")
            handle.write("\n")
    return path


def digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, hidden ones included."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_same_model(out: Path, reference: Path) -> None:
    """Same final weights (to 1e-7) and the same number of optimizer steps."""
    a, b = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")
    step = [json.loads((d / run_dir.INFO_FILE).read_text())["global_step"] for d in (reference, out)]
    assert step[0] == step[1] == STEPS


def assert_same_files(out: Path, reference: Path) -> None:
    """The same file names as the uninterrupted run: no torn checkpoint, staged or temporary file left."""

    def names(d: Path) -> set[str]:
        return {p.relative_to(d).as_posix() for p in d.rglob("*")}

    assert names(out) == names(reference)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def checkpoint_ready(checkpoints: Path, step: int) -> Callable[[], bool]:
    return lambda: (checkpoints / f"checkpoint-{step}").is_dir()


# ------------------------------------------------------------------------------ pregenerate


@pytest.fixture(scope="module")
def pregenerate_case(tmp_path_factory, real_teacher_dir) -> tuple[list[str], dict]:
    """The command (without --out) on 100 two-document shards, and its uninterrupted output's digest."""
    root = tmp_path_factory.mktemp("pregenerate")
    corpus = write_corpus(root / "corpus.txt", 200)
    args = [
        "pregenerate",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(real_teacher_dir),
        "--epochs",
        "2",
        "--docs-per-shard",
        "2",
        "--format",
        "both",
    ]
    reference = pregenerate(
        [corpus], real_teacher_dir, root / "reference", PregenerateConfig(epochs=2, docs_per_shard=2, format="both")
    )
    return args, digest(reference)


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
    """The command (without --glue-dir), 120 SST-2 examples (24 chunks) and the uninterrupted train_aug.tsv."""
    root = tmp_path_factory.mktemp("augment")
    with open(shared_data / "glue" / "SST-2" / "train.tsv", "rb") as src:
        train = b"".join(src.readline() for _ in range(121))
    (root / "SST-2").mkdir()
    (root / "SST-2" / "train.tsv").write_bytes(train)
    args = [
        "augment",
        "--task",
        "SST-2",
        "--mlm",
        str(tiny_bert_dir),
        "--chunk-size",
        "5",
        "--batch-size",
        "16",
        "--glove",
        str(shared_data / "vectors" / "glove.6B.50d.top9163.txt"),
    ]
    assert cli_main([*args, "--glue-dir", str(root)]) == 0
    return args, train, (root / "SST-2" / "train_aug.tsv").read_bytes()


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
    """The command (without --out) on pregenerated text, and the uninterrupted run's directory."""
    root = tmp_path_factory.mktemp("general")
    data = pregenerate(
        [write_corpus(root / "corpus.txt", 24, seed=1)],
        tiny_bert_dir,
        root / "data",
        PregenerateConfig(epochs=1, max_seq_len=32, docs_per_shard=4),
    )
    student = make_tiny_bert(root / "student", tokenizer, seed=3)
    args = [
        "distill",
        "general",
        "--teacher",
        str(tiny_bert_dir),
        "--student",
        str(student),
        "--data",
        str(data),
        *TRAIN_FLAGS,
    ]
    reference = root / "reference"
    assert cli_main([*args, "--out", str(reference)]) == 0
    key = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(
        load_file(reference / "model.safetensors")[key], load_file(student / "model.safetensors")[key]
    )  # training moved the weights
    return args, reference


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
