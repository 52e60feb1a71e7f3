"""`tensorslim distill task` end to end: both stages, per-task recipes, --aug, --stage, regression."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from transformers import AutoModelForSequenceClassification

from conftest import make_tiny_bert
from glue_subset import make_glue_subset
from tensorslim.cli import main
from tensorslim.cli.flags import parse_training_args
from tensorslim.data.glue import get_task
from tensorslim.train import recipes
from tensorslim.train.task import stage_checkpoints, stage_defaults, stage_training_args

FAST = [
    "--max_steps",
    "3",
    "--per_device_train_batch_size",
    "8",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "3",
]


@pytest.fixture(scope="module")
def glue(tmp_path_factory, shared_data):
    return make_glue_subset(shared_data, tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    return Namespace(
        teacher=make_tiny_bert(root / "teacher", tokenizer, head="cls", layers=2, seed=0),
        teacher_reg=make_tiny_bert(root / "teacher_reg", tokenizer, head="cls", num_labels=1, seed=0),
        student=make_tiny_bert(root / "student", tokenizer, layers=1, seed=5),
    )


def info(path):
    return json.loads((path / "tensorslim_training.json").read_text())


def distill_task(teacher, student, glue, out, *extra, task="SST-2"):
    """`tensorslim distill task` of `student` from `teacher` into `out`; returns the exit code."""
    args = ["--teacher", str(teacher), "--student", str(student), "--task", task, "--glue-dir", str(glue)]
    return main(["distill", "task", *args, "--out", str(out), *extra])


def test_both_stages(tmp_path, models, glue):
    out = tmp_path / "out"
    assert distill_task(models.teacher, models.student, glue, out, *FAST) == 0
    stage1, stage2 = info(out / "stage1"), info(out)
    assert (
        stage1["distillation"]["losses"] == ["attention", "hidden"] and stage1["distillation"]["layer_map"] == "uniform"
    )
    assert stage2["distillation"]["losses"] == ["logits"] and stage2["max_seq_length"] == 64
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.id2label == {0: "0", 1: "1"}
    assert "eval_accuracy" in stage2["metrics"] and stage2["train_split"] == "train"
    # --resume on a finished run: stage 1 is not repeated, stage 2 continues from its last checkpoint
    assert distill_task(models.teacher, models.student, glue, out, "--resume", *FAST) == 0


def test_stage_2_only_with_aug_and_config_file(tmp_path, models, glue):
    aug_glue = tmp_path / "glue"
    (aug_glue / "SST-2").mkdir(parents=True)
    for split in ("train", "dev"):
        (aug_glue / "SST-2" / f"{split}.tsv").write_text((glue / "SST-2" / f"{split}.tsv").read_text())
    lines = (glue / "SST-2" / "train.tsv").read_text().splitlines(keepends=True)
    (aug_glue / "SST-2" / "train_aug.tsv").write_text(lines[0] + "".join(lines[1:11]))  # 10 examples
    config = tmp_path / "kd.yaml"
    config.write_text("stage2:\n  temperature: 2.0\n")
    out = tmp_path / "out"
    assert (
        distill_task(
            models.teacher,
            models.teacher,
            aug_glue,
            out,
            "--aug",
            "--stage",
            "2",
            "--distill-config",
            str(config),
            *FAST,
        )
        == 0
    )
    record = info(out)
    assert (record["train_split"], record["train_examples"]) == ("train_aug", 10)
    assert record["distillation"]["temperature"] == 2.0 and not (out / "stage1").exists()


def test_regression_task_uses_gold_scores(tmp_path, models, glue):
    out = tmp_path / "out"
    assert distill_task(models.teacher_reg, models.student, glue, out, "--stage", "2", *FAST, task="STS-B") == 0
    record = info(out)
    assert record["distillation"]["losses"] == ["regression"] and record["max_seq_length"] == 128
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1
    assert "eval_pearson" in record["metrics"]


def test_teacher_for_another_task_is_refused(tmp_path, models, glue, caplog):
    assert distill_task(models.teacher, models.student, glue, tmp_path / "o", *FAST, task="MNLI") == 2
    assert "num_labels=2 but MNLI needs num_labels=3" in caplog.text


def test_paper_recipe_defaults_and_flag_overrides(tmp_path):
    a1 = stage_training_args(tmp_path, "CoLA", 1)
    a2 = stage_training_args(tmp_path, "CoLA", 2)
    assert (a1.num_train_epochs, a2.num_train_epochs) == (20, 30)
    assert (a1.learning_rate, a1.per_device_train_batch_size, str(a1.lr_scheduler_type)) == (
        5e-5,
        32,
        "SchedulerType.CONSTANT",
    )
    assert a2.warmup_steps == 0.1 and a2.metric_for_best_model == "score"
    assert a1.output_dir == str(tmp_path / "stage1" / "checkpoints")
    assert stage_training_args(tmp_path, "STS-B", 1, epochs=2.5).num_train_epochs == 2.5
    assert stage_training_args(tmp_path, "RTE", 2, learning_rate=1e-5).learning_rate == 1e-5
    flagged = parse_training_args(["--learning_rate", "1e-5"], stage_checkpoints(tmp_path, 2), stage_defaults("RTE", 2))
    assert (flagged.learning_rate, flagged.num_train_epochs) == (1e-5, 20)
    assert recipes.task_epochs("MNLI") == (3, 3) and get_task("SST-2").max_seq_length == 64
    assert get_task("MRPC").max_seq_length == 128
