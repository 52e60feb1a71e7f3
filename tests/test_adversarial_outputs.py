"""Adversarial suite, data loss (issue 16): no command replaces or empties what it should not.

For every command that writes a directory: an --out that is a user's directory, another command's
output, one of the command's inputs (also inside or around it, also with --overwrite), or a file.
Each case runs the real CLI in a subprocess and checks the exit code, the message, that no
traceback was printed and that every input and earlier output is byte-identical afterwards.
"""

from __future__ import annotations

import json

import pytest

from adversarial_world import TINY_DEMO, TRAIN, World
from cli_harness import assert_clean_failure, snapshot


def writer_args(command: str, w: dict, out) -> list:
    """The command line of `command` with inputs `w` (name -> path) writing `out`."""
    tiny_demo = ["--glue-dir", w["glue"], *TINY_DEMO]
    return {
        "decompose": ["decompose", "--teacher", w["teacher"], "--out", out, "--rank", "8"],
        "pregenerate": [
            "pregenerate",
            "--corpus",
            w["corpus"],
            "--tokenizer",
            w["teacher"],
            "--out",
            out,
            "--docs-per-shard",
            "2",
            "--max-seq-len",
            "32",
        ],
        "finetune": [
            "finetune",
            "--model",
            w["teacher"],
            "--task",
            "SST-2",
            "--glue-dir",
            w["glue"],
            "--out",
            out,
            "--max-seq-length",
            "32",
            *TRAIN,
        ],
        "distill general": [
            "distill",
            "general",
            "--teacher",
            w["teacher"],
            "--student",
            w["student"],
            "--data",
            w["pregen"],
            "--out",
            out,
            *TRAIN,
        ],
        "distill task": [
            "distill",
            "task",
            "--teacher",
            w["finetuned"],
            "--student",
            w["student"],
            "--task",
            "SST-2",
            "--glue-dir",
            w["glue"],
            "--out",
            out,
            "--max-seq-length",
            "32",
            *TRAIN,
        ],
        "demo": ["demo", "--out", out, "--teacher", w["teacher"], *tiny_demo],
        "export": ["export", "--model", w["student"], "--format", "dense", "--out", out],
        "sweep": [
            "sweep",
            "--teacher",
            w["finetuned"],
            "--task",
            "SST-2",
            "--glue-dir",
            w["glue"],
            "--ranks",
            "8",
            "--out",
            out,
            "--data",
            w["pregen"],
            "--max-seq-length",
            "32",
            "--batch-size",
            "4",
        ],
    }[command].copy()


#: The inputs of each command that writes a directory (the names of World fields).
INPUTS = {
    "decompose": ["teacher"],
    "pregenerate": ["teacher", "corpus"],
    "finetune": ["teacher", "glue"],
    "distill general": ["teacher", "student", "pregen"],
    "distill task": ["finetuned", "student", "glue"],
    "demo": ["teacher", "glue"],
    "sweep": ["finetuned", "glue", "pregen"],
    "export": ["student"],
}
WRITERS = list(INPUTS)
#: Another command's output that `command` must not take over.
OTHER = {
    "decompose": "finetuned",
    "pregenerate": "finetuned",
    "finetune": "student",
    "distill general": "finetuned",
    "distill task": "student",
    "demo": "finetuned",
    "sweep": "student",
    "export": "finetuned",
}


def inputs_of(w: World) -> dict:
    return {name: getattr(w, name) for name in ("teacher", "glue", "corpus", "student", "pregen", "finetuned")}


def run_and_check(cli, args, message, watched) -> None:
    before = {str(p): snapshot(p) for p in watched}
    result = cli(*args)
    assert_clean_failure(result, message)
    for p in watched:
        assert snapshot(p) == before[str(p)], f"{p} changed:\n{result}"


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("relation", ["is", "lies inside", "contains"])
def test_output_overlapping_an_input_is_refused(cli, world, tmp_path, command, relation, overwrite):
    """`--out X` where X is, lies inside or contains one of the command's inputs: never touched."""
    inputs = inputs_of(world)
    victim_name = INPUTS[command][0] if relation != "contains" else INPUTS[command][-1]
    holder = tmp_path / "holder"
    victim = world.copy(victim_name, holder / victim_name)
    inputs[victim_name] = victim
    out = {"is": victim, "lies inside": victim / "sub", "contains": holder}[relation]
    if relation == "lies inside" and victim.is_file():
        out = victim.parent / victim.name  # a file input has no inside: the same path again
    args = writer_args(command, inputs, out) + (["--overwrite"] if overwrite else [])
    expected = "the input" if relation != "is" or victim.is_dir() else "is a file"
    run_and_check(cli, args, expected, [holder, *world.inputs()])


@pytest.mark.parametrize("command", WRITERS)
def test_each_input_as_output_with_overwrite_is_refused(cli, world, tmp_path, command):
    """Every input of the command in turn as --out, with --overwrite (the issue's data-loss cases)."""
    for name in INPUTS[command][1:]:  # the first input is covered above
        inputs = inputs_of(world)
        victim = world.copy(name, tmp_path / name)
        inputs[name] = victim
        args = writer_args(command, inputs, victim) + ["--overwrite"]
        run_and_check(cli, args, "the input" if victim.is_dir() else "is a file", [victim, *world.inputs()])


@pytest.mark.parametrize("command", WRITERS)
def test_a_users_directory_is_not_replaced_without_overwrite(cli, world, tmp_path, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a week of work")
    (out / ".hidden").write_text("config")
    run_and_check(
        cli,
        writer_args(command, inputs_of(world), out),
        ("not written by tensorslim", "--overwrite"),
        [out, *world.inputs()],
    )


@pytest.mark.parametrize("command", WRITERS)
def test_another_commands_output_is_not_replaced_without_overwrite(cli, world, tmp_path, command):
    """E.g. `decompose --out D` / `pregenerate --out D` where D is a fine-tuned model (exited 0 and deleted it)."""
    out = world.copy(OTHER[command], tmp_path / "earlier")
    run_and_check(
        cli, writer_args(command, inputs_of(world), out), ("holds the output of", "--overwrite"), [out, *world.inputs()]
    )


@pytest.mark.parametrize("command", WRITERS)
def test_files_added_to_an_earlier_output_are_not_deleted(cli, world, tmp_path, command):
    """A finished output of the same command, to which the user added a file: refused, file kept."""
    source = {"decompose": "student", "pregenerate": "pregen", "finetune": "finetuned"}.get(command)
    if source is None:  # the other commands' outputs are made by them below
        out = tmp_path / "earlier"
        out.mkdir()
        (out / ".tensorslim").write_text(json.dumps({"command": command, "entries": ["model.safetensors"]}))
        (out / "model.safetensors").write_text("weights")
    else:
        out = world.copy(source, tmp_path / "earlier")
    (out / "my-notes.md").write_text("results I wrote by hand")
    run_and_check(
        cli,
        writer_args(command, inputs_of(world), out),
        ("did not write: my-notes.md", "--overwrite"),
        [out, *world.inputs()],
    )


@pytest.mark.parametrize("command", WRITERS)
def test_output_that_is_a_file_is_refused(cli, world, tmp_path, command):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    run_and_check(
        cli, writer_args(command, inputs_of(world), out) + ["--overwrite"], "is a file", [out, *world.inputs()]
    )


@pytest.mark.parametrize("command", ["finetune", "distill general", "distill task"])
def test_training_over_an_earlier_run_needs_resume_or_overwrite(cli, world, tmp_path, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tensorslim").write_text(json.dumps({"command": command, "entries": None}))
    (out / "checkpoints").mkdir()
    run_and_check(
        cli, writer_args(command, inputs_of(world), out), ("holds an earlier run", "--resume"), [out, *world.inputs()]
    )
    run_and_check(
        cli,
        writer_args(command, inputs_of(world), out) + ["--resume", "--overwrite"],
        "contradict",
        [out, *world.inputs()],
    )


@pytest.mark.parametrize("target", ["config.json", "model.safetensors", "tokenizer.json"])
def test_report_json_never_replaces_a_model_file(cli, world, tmp_path, target):
    model = world.copy("student", tmp_path / "student")
    run_and_check(
        cli,
        ["report", "--model", model, "--seconds", "0.1", "--json", model / target],
        "not written by this command",
        [model, *world.inputs()],
    )


@pytest.mark.parametrize(
    "existing, message",
    [
        ("eval_results.json", "not written by this command"),
        ("SST-2.tsv", "not a GLUE prediction file"),
    ],
)
def test_evaluate_never_replaces_a_users_file(cli, world, tmp_path, existing, message):
    out = tmp_path / "results"
    out.mkdir()
    (out / existing).write_text("my own numbers\n")
    args = [
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
    ]
    run_and_check(cli, args, message, [out, *world.inputs()])


def test_evaluate_and_report_replace_their_own_files_and_touch_nothing_else(cli, world, tmp_path):
    model = world.copy("finetuned", tmp_path / "model")
    before = snapshot(model)
    args = ["evaluate", "--model", model, "--task", "SST-2", "--glue-dir", world.glue, "--max-eval-samples", "4"]
    for _ in range(2):  # the second run replaces the first's results
        assert cli(*args).code == 0
    assert cli("report", "--model", model, "--seconds", "0.1").code == 0
    after = snapshot(model)
    assert {k: v for k, v in after.items() if k not in ("eval_results.json", "report.json")} == before
    assert "eval_results.json" in after and "report.json" in after
