"""Adversarial suite, bad input (issue 16): refused before any work, with one clear message.

Every command with out-of-range numbers, missing or wrong directories, damaged models (NaN
weights, truncated weights, unreadable config), devices the machine lacks and files that are not
what they claim. Each case runs the real CLI in a subprocess: exit code 2, the message, no
traceback, no output left behind (not even an empty directory) and every input byte-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from adversarial_world import TRAIN, World
from cli_harness import assert_clean_failure, snapshot
from tensorslim.compress.export import export_to_dir


def damaged(w: World, tmp: Path, name: str, how: str) -> Path:
    """A copy of model `name` with NaN weights, truncated weights, an unreadable config, a changed
    training record, or in int8."""
    if how == "int8":  # the model as `export --format int8` writes it
        export_to_dir(getattr(w, name), tmp / f"{name}-int8", "int8")
        return tmp / f"{name}-int8"
    model = w.copy(name, tmp / f"{name}-{how}")
    if how == "nan":
        weights = load_file(model / "model.safetensors")
        key = next(
            k for k in sorted(weights) if ("encoder" in k or "tensorslim_factors" in k) and weights[k].dim() >= 2
        )
        weights[key][0, 0] = float("nan")
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    elif how == "truncated":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "config":
        (model / "config.json").write_text("{ not json")
    elif how == "cola":
        record = json.loads((model / "tensorslim_training.json").read_text())
        (model / "tensorslim_training.json").write_text(json.dumps({**record, "task": "CoLA"}))
    return model


def glove_file(tmp: Path, content: str) -> Path:
    path = tmp / "glove-bad.txt"
    path.write_text(content)
    return path


T, G, S, P, F, C, GL = "teacher", "glue", "student", "pregen", "finetuned", "corpus", "glove"


def x(name):
    """Placeholder for the world input `name` in a case's argument list."""
    return ("input", name)


def dmg(name, how):
    return ("damaged", name, how)


OUT = ("out",)
TRAINING = list(TRAIN)
DECOMPOSE = ["decompose", "--teacher", x(T), "--out", OUT]
PREGEN = ["pregenerate", "--corpus", x(C), "--tokenizer", x(T), "--out", OUT, "--docs-per-shard", "2"]
FINETUNE = ["finetune", "--model", x(T), "--task", "SST-2", "--glue-dir", x(G), "--out", OUT, *TRAINING]
GENERAL = ["distill", "general", "--teacher", x(T), "--student", x(S), "--data", x(P), "--out", OUT, *TRAINING]
GENERAL_TEXT = ["distill", "general", "--teacher", x(T), "--student", x(S), "--corpus", x(C), "--out", OUT, *TRAINING]
TASK = [
    "distill",
    "task",
    "--teacher",
    x(F),
    "--student",
    x(S),
    "--task",
    "SST-2",
    "--glue-dir",
    x(G),
    "--out",
    OUT,
    *TRAINING,
]
EXPORT = ["export", "--model", x(S), "--format", "onnx", "--out", OUT]
INT8 = {"onnx": "int8"}
EVALUATE = ["evaluate", "--model", x(F), "--task", "SST-2", "--glue-dir", x(G), "--out", OUT]
REPORT = ["report", "--model", x(S), "--teacher", x(T), "--seconds", "0.1", "--json", ("file", "report.json")]
AUGMENT = ["augment", "--task", "SST-2", "--glue-dir", ("glue-copy",), "--glove", x(GL)]
DEMO = ["demo", "--out", OUT, "--teacher", x(T), "--task", "SST-2", "--glue-dir", x(G), "--max-seq-length", "32"]
SWEEP = [
    "sweep",
    "--teacher",
    x(F),
    "--task",
    "SST-2",
    "--glue-dir",
    x(G),
    "--ranks",
    "8",
    "--out",
    OUT,
    "--max-seq-length",
    "32",
]


def case(id, base, extra, message, replace=None):
    """A pytest param: `base` with `extra` flags appended (and `replace` {old: new} applied)."""
    args = [replace.get(a, a) if replace else a for a in base] + list(extra)
    return pytest.param(args, message, id=id)


CASES = [
    # decompose
    case("decompose-rank-0", DECOMPOSE, ["--rank", "0"], "rank 0 is out of range"),
    case("decompose-rank-too-big", DECOMPOSE, ["--rank", "33"], "rank 33 is out of range"),
    case("decompose-layer-rank-0", DECOMPOSE, ["--layer-rank", "0"], "layer rank 0 is out of range"),
    case("decompose-layer-rank-too-big", DECOMPOSE, ["--layer-rank", "1000"], "layer rank 1000 is out of range"),
    case("decompose-embedding-rank-0", DECOMPOSE, ["--embedding-rank", "0"], ("embedding rank 0", "--embedding-rank")),
    case("decompose-embedding-rank-width", DECOMPOSE, ["--embedding-rank", "32"], "embedding rank 32 is out of range"),
    case(
        "decompose-embedding-rank-and-compression",
        DECOMPOSE,
        ["--embedding-rank", "8", "--embedding-compression", "50%"],
        "pass one of --embedding-rank, --embedding-compression",
    ),
    case("decompose-embedding-compression-0", DECOMPOSE, ["--embedding-compression", "0%"], "not between 0 and 1"),
    case("decompose-embedding-compression-100", DECOMPOSE, ["--embedding-compression", "100%"], "not between 0 and 1"),
    case("decompose-tol-0", DECOMPOSE, ["--tol", "0"], "--tol 0.0 is out of range"),
    case("decompose-tol-nan", DECOMPOSE, ["--tol", "nan"], "--tol nan is out of range"),
    case("decompose-max-iter-0", DECOMPOSE, ["--max-iter", "0"], "--max-iter 0 is out of range"),
    case("decompose-num-labels-0", DECOMPOSE, ["--num-labels", "0"], "--num-labels 0 is out of range"),
    case("decompose-budget-0", DECOMPOSE, ["--budget", "0"], "--budget 0 is out of range"),
    case("decompose-budget-unreadable", DECOMPOSE, ["--budget", "lots"], "cannot read the budget"),
    case("decompose-budget-too-small", DECOMPOSE, ["--budget", "10"], "no tucker rank setting fits"),
    case("decompose-method-unknown", DECOMPOSE, ["--method", "cp"], "invalid choice"),
    case("decompose-unknown-flag", DECOMPOSE, ["--ranks", "8"], "unrecognized arguments"),
    case("decompose-teacher-missing", DECOMPOSE, [], "does not exist", {x(T): "/nonexistent/teacher"}),
    case("decompose-teacher-is-file", DECOMPOSE, [], "is a file", {x(T): x(C)}),
    case("decompose-teacher-nan", DECOMPOSE, [], ("NaN", "encoder"), {x(T): dmg(T, "nan")}),
    case("decompose-teacher-truncated", DECOMPOSE, [], "cannot load the weights", {x(T): dmg(T, "truncated")}),
    case("decompose-teacher-bad-config", DECOMPOSE, [], "cannot read", {x(T): dmg(T, "config")}),
    case("decompose-teacher-is-a-student", DECOMPOSE, [], "already a decomposed student", {x(T): x(S)}),
    case("decompose-teacher-is-data", DECOMPOSE, [], "has no config.json", {x(T): x(P)}),
    # pregenerate
    case("pregenerate-corpus-missing", PREGEN, [], "/nonexistent/corpus.txt", {x(C): "/nonexistent/corpus.txt"}),
    case("pregenerate-corpus-empty", PREGEN, [], "holds no sentences", {x(C): ("file", "empty.txt")}),
    case("pregenerate-tokenizer-missing", PREGEN, [], "/nonexistent/tok", {x(T): "/nonexistent/tok"}),
    case("pregenerate-tokenizer-not-a-model", PREGEN, [], "tokenizer", {x(T): x(P)}),
    case("pregenerate-epochs-0", PREGEN, ["--epochs", "0"], "epochs=0"),
    case("pregenerate-max-seq-len-4", PREGEN, ["--max-seq-len", "4"], "max_seq_len=4"),
    case("pregenerate-max-seq-len-huge", PREGEN, ["--max-seq-len", "100000"], "model_max_length"),
    case("pregenerate-workers-0", PREGEN, ["--workers", "0"], "workers=0"),
    case("pregenerate-masked-lm-prob-1", PREGEN, ["--masked-lm-prob", "1"], "masked_lm_prob"),
    case("pregenerate-short-seq-prob-2", PREGEN, ["--short-seq-prob", "2"], "short_seq_prob"),
    case("pregenerate-docs-per-shard-1", PREGEN, ["--docs-per-shard", "1"], "docs_per_shard"),
    case("pregenerate-format-unknown", PREGEN, ["--format", "csv"], "invalid choice"),
    # finetune
    case("finetune-model-missing", FINETUNE, [], "does not exist", {x(T): "/nonexistent/model"}),
    case("finetune-model-nan", FINETUNE, [], "NaN", {x(T): dmg(T, "nan")}),
    case("finetune-model-truncated", FINETUNE, [], "cannot load the weights", {x(T): dmg(T, "truncated")}),
    case("finetune-model-bad-config", FINETUNE, [], "cannot read", {x(T): dmg(T, "config")}),
    case("finetune-task-unknown", FINETUNE, [], "unknown GLUE task", {"SST-2": "SST-3"}),
    case("finetune-glue-missing", FINETUNE, [], "does not exist", {x(G): "/nonexistent/glue"}),
    case("finetune-no-train-aug", FINETUNE, ["--train-split", "train_aug"], "train_aug"),
    case("finetune-max-seq-length-0", FINETUNE, ["--max-seq-length", "0"], "--max-seq-length 0 is out of range"),
    case("finetune-max-seq-length-huge", FINETUNE, ["--max-seq-length", "100000"], "out of range for this model"),
    case("finetune-max-train-samples-0", FINETUNE, ["--max-train-samples", "0"], "positive"),
    case("finetune-bad-learning-rate", FINETUNE, ["--learning_rate", "fast"], "invalid training flags"),
    case("finetune-output-dir-flag", FINETUNE, ["--output_dir", "/tmp/x"], "--output_dir is set by tensorslim"),
    case("finetune-bad-epochs", FINETUNE, ["--num_train_epochs", "many"], "invalid training flags"),
    # distill general
    case("general-data-missing", GENERAL, [], "/nonexistent/data", {x(P): "/nonexistent/data"}),
    case("general-data-not-pregenerated", GENERAL, [], "pregenerate", {x(P): x(G)}),
    case("general-teacher-missing", GENERAL, [], "does not exist", {x(T): "/nonexistent/teacher"}),
    case("general-student-missing", GENERAL, [], "does not exist", {x(S): "/nonexistent/student"}),
    case("general-student-nan", GENERAL, [], "NaN", {x(S): dmg(S, "nan")}),
    case("general-teacher-nan", GENERAL, [], "NaN", {x(T): dmg(T, "nan")}),
    case("general-config-missing", GENERAL, ["--distill-config", "/nonexistent/c.json"], "/nonexistent/c.json"),
    case("general-config-unreadable", GENERAL, ["--distill-config", ("file", "bad.json")], "bad.json"),
    case("general-max-train-samples-0", GENERAL, ["--max-train-samples", "0"], "--max-train-samples 0"),
    case("general-layer-map-unknown", GENERAL, ["--layer-map", "first"], "invalid choice"),
    case("general-data-and-corpus", GENERAL_TEXT, ["--data", x(P)], "not allowed with argument"),
    case("general-seq-length-with-data", GENERAL, ["--seq-length", "16"], "go with --corpus"),
    case("general-corpus-missing", GENERAL_TEXT, [], "does not exist", {x(C): "/nonexistent/corpus.txt"}),
    case("general-corpus-too-short", GENERAL_TEXT, [], "fewer than 128 tokens", {x(C): ("file", "short.txt")}),
    case("general-seq-length-huge", GENERAL_TEXT, ["--seq-length", "100000"], "out of range for this model"),
    case("general-seq-length-0", GENERAL_TEXT, ["--seq-length", "0"], "--seq-length 0 is out of range"),
    # distill task
    case("task-teacher-not-classifier", TASK, [], "has no classification head", {x(F): x(T)}),
    case("task-teacher-other-task", TASK, [], "was trained on CoLA", {x(F): dmg(F, "cola")}),
    case("task-teacher-nan", TASK, [], "NaN", {x(F): dmg(F, "nan")}),
    case("task-student-missing", TASK, [], "does not exist", {x(S): "/nonexistent/student"}),
    case("task-student-truncated", TASK, [], "cannot load the weights", {x(S): dmg(S, "truncated")}),
    case("task-no-train-aug", TASK, ["--aug"], "train_aug"),
    case("task-stage-unknown", TASK, ["--stage", "3"], "invalid choice"),
    case("task-max-seq-length-0", TASK, ["--max-seq-length", "0"], "out of range"),
    case("task-max-seq-length-huge", TASK, ["--max-seq-length", "100000"], "out of range for this model"),
    case("task-glue-missing", TASK, [], "does not exist", {x(G): "/nonexistent/glue"}),
    # evaluate
    case("evaluate-device-cuda", EVALUATE, ["--device", "cuda"], "no CUDA GPU"),
    case("evaluate-device-unknown", EVALUATE, ["--device", "tpu"], "device"),
    case("evaluate-batch-size-0", EVALUATE, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("evaluate-max-eval-samples-0", EVALUATE, ["--max-eval-samples", "0"], "--max-eval-samples 0"),
    case("evaluate-max-seq-length-0", EVALUATE, ["--max-seq-length", "0"], "out of range"),
    case("evaluate-max-seq-length-huge", EVALUATE, ["--max-seq-length", "100000"], "out of range for this model"),
    case("evaluate-model-other-task", EVALUATE, [], "was trained on CoLA", {x(F): dmg(F, "cola")}),
    case("evaluate-model-not-classifier", EVALUATE, [], "has no classification head", {x(F): x(T)}),
    case("evaluate-model-missing", EVALUATE, [], "does not exist", {x(F): "/nonexistent/model"}),
    case("evaluate-model-truncated", EVALUATE, [], "cannot load the weights", {x(F): dmg(F, "truncated")}),
    case("evaluate-out-is-file", EVALUATE, [], "is a file", {OUT: x(C)}),
    case("evaluate-task-unknown", EVALUATE, [], "unknown GLUE task", {"SST-2": "SST-3"}),
    # export
    case("export-model-not-a-model", EXPORT, [], "has no config.json", {x(S): x(P)}),
    case("export-model-missing", EXPORT, [], "does not exist", {x(S): "/nonexistent/model"}),
    case("export-model-is-file", EXPORT, [], "is a file", {x(S): x(C)}),
    case("export-model-bad-config", EXPORT, [], "cannot read", {x(S): dmg(S, "config")}),
    case("export-model-truncated", EXPORT, [], "cannot load the weights", {x(S): dmg(S, "truncated")}),
    case("export-model-nan", EXPORT, [], ("NaN", "tensorslim_factors"), {x(S): dmg(S, "nan")}),
    case("export-format-unknown", EXPORT, [], ("invalid choice: 'tflite'", "onnx", "dense"), {"onnx": "tflite"}),
    case("export-format-missing", ["export", "--model", x(S), "--out", OUT], [], "required: --format"),
    case("export-opset-too-low", EXPORT, ["--opset", "9"], ("--opset 9 is out of range", "from 18")),
    case("export-opset-unknown", EXPORT, ["--opset", "99"], "--opset 99 is out of range"),
    case(
        "export-opset-with-dense", EXPORT, ["--opset", "18"], "--opset applies to --format onnx only", {"onnx": "dense"}
    ),
    case("export-tolerance-0", EXPORT, ["--tolerance", "0"], "--tolerance 0.0 is out of range"),
    case("export-tolerance-nan", EXPORT, ["--tolerance", "nan"], "--tolerance nan is out of range"),
    case("export-int8-of-int8", EXPORT, [], ("already quantised to int8", "float"), INT8 | {x(S): dmg(S, "int8")}),
    case("export-onnx-of-int8", EXPORT, [], "already quantised to int8", {x(S): dmg(S, "int8")}),
    case("export-int8-tolerance", EXPORT, ["--tolerance", "1e-3"], ("--tolerance applies", "--min-cosine"), INT8),
    case("export-min-cosine-with-onnx", EXPORT, ["--min-cosine", "0.9"], "--min-cosine applies to --format int8"),
    case("export-min-cosine-0", EXPORT, ["--min-cosine", "0"], "--min-cosine 0.0 is out of range", INT8),
    case("export-min-cosine-above-1", EXPORT, ["--min-cosine", "1.5"], "--min-cosine 1.5 is out of range", INT8),
    # report
    case("report-device-cuda", REPORT, ["--device", "cuda"], "no CUDA GPU"),
    case("report-device-unknown", REPORT, ["--device", "gpu0"], "device"),
    case("report-batch-size-0", REPORT, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("report-seq-len-0", REPORT, ["--seq-len", "0"], "--seq-len 0 is out of range"),
    case("report-seq-len-huge", REPORT, ["--seq-len", "100000"], "exceeds the 128 positions"),
    case("report-seconds-0", REPORT, ["--seconds", "0"], "--seconds 0.0 is out of range"),
    case("report-seconds-negative", REPORT, ["--seconds", "-3"], "--seconds -3.0 is out of range"),
    case("report-threads-0", REPORT, ["--threads", "0"], "--threads 0 is out of range"),
    case("report-model-missing", REPORT, [], "does not exist", {x(S): "/nonexistent/model"}),
    case("report-teacher-missing", REPORT, [], "does not exist", {x(T): "/nonexistent/teacher"}),
    case("report-json-is-dir", REPORT, [], "is a directory", {("file", "report.json"): ("dir", "reports")}),
    # augment
    case("augment-glove-missing", AUGMENT, [], "does not exist", {x(GL): "/nonexistent/glove.txt"}),
    case("augment-glove-is-dir", AUGMENT, [], "is not a file", {x(GL): x(G)}),
    case("augment-glove-ragged", AUGMENT, [], ("glove-bad.txt:2", "values"), {x(GL): ("glove", "a 1 2\nb 1\n")}),
    case("augment-glove-not-numbers", AUGMENT, [], "glove-bad.txt:1", {x(GL): ("glove", "a x y\n")}),
    case("augment-mlm-missing", AUGMENT, ["--mlm", "/nonexistent/mlm"], "does not exist"),
    case("augment-mlm-not-a-model", AUGMENT, ["--mlm", x(G)], "has no config.json"),
    case("augment-p-2", AUGMENT, ["--p", "2"], "--p 2.0 is out of range"),
    case("augment-n-negative", AUGMENT, ["--n", "-1"], "--n -1 is out of range"),
    case("augment-m-0", AUGMENT, ["--m", "0"], "--m 0 is out of range"),
    case("augment-batch-size-0", AUGMENT, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("augment-chunk-size-0", AUGMENT, ["--chunk-size", "0"], "--chunk-size 0 is out of range"),
    case("augment-max-examples-0", AUGMENT, ["--max-examples", "0"], "--max-train-samples 0 is out of range"),
    case("augment-device-cuda", AUGMENT, ["--device", "cuda"], "no CUDA GPU"),
    case("augment-task-unknown", ["augment", "--task", "SST-3", "--glue-dir", ("glue-copy",)], [], "unknown GLUE task"),
    # demo
    case("demo-compression-0", DEMO, ["--compression", "0"], "--compression 0.0 is out of range"),
    case("demo-compression-1", DEMO, ["--compression", "1"], "--compression 1.0 is out of range"),
    case("demo-compression-nan", DEMO, ["--compression", "nan"], "--compression nan is out of range"),
    case(
        "demo-compression-huge",
        DEMO,
        ["--compression", "1e9"],
        ("leaves less than one weight", "smaller --compression"),
    ),
    case(
        "demo-compression-too-big",
        DEMO,
        ["--compression", "20000"],
        ("no tucker rank setting", "smaller --compression"),
    ),
    case("demo-compression-one-bad", DEMO, ["--compression", "7", "-2"], "--compression -2.0 is out of range"),
    case("demo-batch-size-0", DEMO, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("demo-max-seq-length-0", DEMO, ["--max-seq-length", "0"], "out of range"),
    case("demo-max-seq-length-huge", DEMO, ["--max-seq-length", "100000"], "out of range for this model"),
    case("demo-aug-n-negative", DEMO, ["--aug-n", "-1"], "--aug-n -1 is out of range"),
    case("demo-finetune-epochs-0", DEMO, ["--finetune-epochs", "0"], "--finetune-epochs 0.0 is out of range"),
    case("demo-finetune-lr-0", DEMO, ["--finetune-lr", "0"], "--finetune-lr 0.0 is out of range"),
    case("demo-general-steps-0", DEMO, ["--general-steps", "0"], "--general-steps 0 is out of range"),
    case("demo-stage1-steps-0", DEMO, ["--stage1-steps", "0"], "--stage1-steps 0 is out of range"),
    case("demo-corpus-documents-0", DEMO, ["--corpus-documents", "0"], "--corpus-documents 0 is out of range"),
    case("demo-max-eval-samples-0", DEMO, ["--max-eval-samples", "0"], "--max-eval-samples 0 is out of range"),
    case(
        "demo-glue-task-without-glue-dir",
        ["demo", "--out", OUT, "--teacher", x(T), "--task", "CoLA"],
        [],
        "needs --glue-dir",
    ),
    case("demo-task-not-in-glue-dir", DEMO, [], "no RTE train file", {"SST-2": "RTE"}),
    case("demo-teacher-missing", DEMO, [], "does not exist", {x(T): "/nonexistent/teacher"}),
    case("demo-teacher-nan", DEMO, [], "NaN", {x(T): dmg(T, "nan")}),
    case("demo-method-unknown", DEMO, ["--method", "cp"], "invalid choice"),
    # sweep
    case("sweep-ranks-unreadable", SWEEP, [], "cannot read the rank setting", {"8": "eight"}),
    case("sweep-ranks-0", SWEEP, [], "rank 0 is out of range", {"8": "0"}),
    case("sweep-ranks-too-big", SWEEP, [], "out of range", {"8": "999x999"}),
    case("sweep-budget-too-small", SWEEP, [], "no tucker rank setting fits", {"8": "0.01k"}),
    case("sweep-teacher-not-classifier", SWEEP, [], "has no classification head", {x(F): x(T)}),
    case("sweep-teacher-other-task", SWEEP, [], "was trained on CoLA", {x(F): dmg(F, "cola")}),
    case("sweep-teacher-nan", SWEEP, [], "NaN", {x(F): dmg(F, "nan")}),
    case("sweep-data-not-pregenerated", SWEEP, ["--data", x(G)], "no finished pregenerated data"),
    case("sweep-data-missing", SWEEP, ["--data", "/nonexistent/data"], "does not exist"),
    case("sweep-glue-missing", SWEEP, [], "does not exist", {x(G): "/nonexistent/glue"}),
    case("sweep-no-train-aug", SWEEP, ["--aug"], "train_aug"),
    case("sweep-batch-size-0", SWEEP, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("sweep-stage1-epochs-0", SWEEP, ["--stage1-epochs", "0"], "--stage1-epochs 0.0 is out of range"),
    case("sweep-max-eval-samples-0", SWEEP, ["--max-eval-samples", "0"], "--max-eval-samples 0 is out of range"),
    case("sweep-max-seq-length-huge", SWEEP, [], "out of range for this model", {"32": "100000"}),
]


def resolve(args: list, w: World, tmp: Path) -> list[str]:
    out = []
    for a in args:
        if not isinstance(a, tuple):
            out.append(str(a))
        elif a[0] == "input":
            out.append(str(getattr(w, a[1])))
        elif a[0] == "damaged":
            out.append(str(damaged(w, tmp, a[1], a[2])))
        elif a == OUT:
            out.append(str(tmp / "out"))
        elif a[0] == "file":
            path = tmp / a[1]
            if a[1] == "empty.txt":
                path.write_text("\n\n")
            elif a[1] == "short.txt":
                path.write_text("Too short for one sequence.\n")
            elif a[1] == "bad.json":
                path.write_text("{ losses: [")
            out.append(str(path))
        elif a[0] == "dir":
            (tmp / a[1]).mkdir()
            out.append(str(tmp / a[1]))
        elif a[0] == "glove":
            out.append(str(glove_file(tmp, a[1])))
        elif a == ("glue-copy",):
            out.append(str(w.copy("glue", tmp / "glue")))
    return out


@pytest.mark.parametrize("args, message", CASES)
def test_bad_input_is_refused_before_any_work(cli, world, tmp_path, args, message):
    argv = resolve(args, world, tmp_path)
    before = {p: snapshot(p) for p in [*world.inputs(), tmp_path]}
    result = cli(*argv)
    assert_clean_failure(result, message)
    assert not (tmp_path / "out").exists(), f"an output directory was left behind:\n{result}"
    for p, state in before.items():
        assert snapshot(p) == state, f"{p} changed:\n{result}"


def test_augment_glove_error_leaves_no_partial_and_the_corrected_command_works(cli, world, tmp_path):
    """A bad --glove left train_aug.tsv.partial, which then blocked the corrected command."""
    glue = world.copy("glue", tmp_path / "glue")
    args = ["augment", "--task", "SST-2", "--glue-dir", glue, "--n", "2", "--max-examples", "4"]
    assert_clean_failure(cli(*args, "--glove", tmp_path / "missing.txt"), "does not exist")
    assert_clean_failure(cli(*args, "--glove", glove_file(tmp_path, "a 1 2\nb 1\n")), "values")
    assert sorted(p.name for p in (glue / "SST-2").iterdir()) == ["dev.tsv", "test.tsv", "train.tsv"]
    result = cli(*args, "--glove", world.glove)
    assert result.code == 0, str(result)
    assert (glue / "SST-2" / "train_aug.tsv").is_file() and not (glue / "SST-2" / "train_aug.tsv.partial").exists()


def test_augment_keeps_an_existing_output_and_never_writes_over_its_input(cli, world, tmp_path):
    glue = world.copy("glue", tmp_path / "glue")
    aug = glue / "SST-2" / "train_aug.tsv"
    shutil.copyfile(glue / "SST-2" / "train.tsv", aug)
    before = snapshot(glue)
    args = ["augment", "--task", "SST-2", "--glove", world.glove, "--n", "1"]
    assert_clean_failure(cli(*args, "--glue-dir", glue), ("already exists", "--overwrite"))
    assert_clean_failure(cli(*args, "--glue-dir", aug, "--overwrite"), "the input")
    assert snapshot(glue) == before
