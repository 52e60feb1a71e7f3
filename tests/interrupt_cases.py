"""Running `tensorslim` commands that get interrupted, and the uninterrupted runs to compare with
(tests/test_interrupt.py kills them; tests/test_resume_recovery.py lays out what a kill leaves)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import digest, make_tiny_bert
from tensorslim.cli import main as cli_main
from tensorslim.data.pregenerate import PregenerateConfig, pregenerate
from tensorslim.train import run_dir

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
LAST, PREVIOUS = f"checkpoint-{STEPS}", f"checkpoint-{STEPS - 2}"


@dataclass(frozen=True)
class KillPoint:
    """Send `sig` `delay` seconds after `after` units of progress (in `stage`, for distill task)."""

    sig: signal.Signals
    after: int
    delay: float
    stage: str = ""


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


# ------------------------------------------------------------------------------ the uninterrupted runs


def pregenerate_case(root: Path, teacher: Path) -> tuple[list[str], dict]:
    """The command (without --out) on 100 two-document shards, and its uninterrupted output's digest."""
    corpus = write_corpus(root / "corpus.txt", 200)
    args = [
        "pregenerate",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(teacher),
        "--epochs",
        "2",
        "--docs-per-shard",
        "2",
        "--format",
        "both",
    ]
    reference = pregenerate(
        [corpus], teacher, root / "reference", PregenerateConfig(epochs=2, docs_per_shard=2, format="both")
    )
    return args, digest(reference)


def augment_case(root: Path, shared_data: Path, mlm: Path) -> tuple[list[str], bytes, bytes]:
    """The command (without --glue-dir), 120 SST-2 examples (24 chunks) and the uninterrupted train_aug.tsv."""
    with open(shared_data / "glue" / "SST-2" / "train.tsv", "rb") as src:
        train = b"".join(src.readline() for _ in range(121))
    (root / "SST-2").mkdir()
    (root / "SST-2" / "train.tsv").write_bytes(train)
    args = [
        "augment",
        "--task",
        "SST-2",
        "--mlm",
        str(mlm),
        "--chunk-size",
        "5",
        "--batch-size",
        "16",
        "--glove",
        str(shared_data / "vectors" / "glove.6B.50d.top9163.txt"),
    ]
    assert cli_main([*args, "--glue-dir", str(root)]) == 0
    return args, train, (root / "SST-2" / "train_aug.tsv").read_bytes()


def general_case(root: Path, teacher: Path, tokenizer) -> tuple[list[str], Path]:
    """The command (without --out) on pregenerated text, and the uninterrupted run's directory."""
    data = pregenerate(
        [write_corpus(root / "corpus.txt", 24, seed=1)],
        teacher,
        root / "data",
        PregenerateConfig(epochs=1, max_seq_len=32, docs_per_shard=4),
    )
    student = make_tiny_bert(root / "student", tokenizer, seed=3)
    args = [
        "distill",
        "general",
        "--teacher",
        str(teacher),
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
