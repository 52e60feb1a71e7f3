"""General distillation end to end (CLI, tiny models, pregenerated real text) and the trainer's
guarantees: a frozen, unwrapped teacher, per-term logging, a clear stop on a non-finite loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, TrainerCallback, TrainingArguments

from conftest import make_tiny_bert
from tensorslim.cli import main
from tensorslim.compress.api import decompose_to_dir
from tensorslim.distill.config import DistillationConfig
from tensorslim.distill.trainer import DistillationTrainer, NonFiniteLossError
from tensorslim.train.pretraining_data import PretrainingCollator, load_inputs

TEXT = [
    "The tower is 324 metres tall, about the same height as an 81-storey building.",
    "It was the first structure to reach a height of 300 metres.",
    "Due to the addition of a broadcasting aerial in 1957, it is now taller than the Chrysler Building.",
    "",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "Once or twice she had peeped into the book her sister was reading.",
    "It had no pictures or conversations in it, and what is the use of a book without pictures?",
    "",
    "Call me Ishmael. Some years ago I thought I would sail about a little.",
    "It is a way I have of driving off the spleen and regulating the circulation.",
    "Whenever I find myself growing grim about the mouth, I account it high time to get to sea.",
]


@pytest.fixture(scope="module")
def pregenerated(tmp_path_factory, tiny_bert_dir) -> Path:
    from tensorslim.data.pregenerate import PregenerateConfig, pregenerate

    root = tmp_path_factory.mktemp("pregen")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TEXT * 4) + "\n")
    return pregenerate(
        [corpus], tiny_bert_dir, root / "data", PregenerateConfig(epochs=1, max_seq_len=32, docs_per_shard=4)
    )


def test_collator_builds_the_attention_mask():
    batch = PretrainingCollator(0)(
        [
            {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0]},
            {"input_ids": [101, 102, 0, 0], "token_type_ids": [0, 0, 0, 0]},
        ]
    )
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert PretrainingCollator(0, pad_to=5)([{"input_ids": [101, 102], "token_type_ids": [0, 1]}])[
        "input_ids"
    ].shape == (1, 5)


def read_weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def test_cli_general_distillation_trains_the_student(tmp_path, tiny_bert_dir, tokenizer, pregenerated):
    student = make_tiny_bert(tmp_path / "student", tokenizer, seed=3)
    out = tmp_path / "out"
    code = main(
        [
            "distill",
            "general",
            "--teacher",
            str(tiny_bert_dir),
            "--student",
            str(student),
            "--data",
            str(pregenerated),
            "--out",
            str(out),
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--logging_steps",
            "1",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert code == 0
    info = json.loads((out / "tensorslim_training.json").read_text())
    assert info["distillation"]["losses"] == ["attention", "hidden"] and info["global_step"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    model = AutoModelForMaskedLM.from_pretrained(out)  # the student keeps its MLM head
    before, after = read_weights(student), read_weights(out)
    moved = [k for k in after if "encoder.layer.1" in k and not torch.equal(before[k], after[k])]
    assert moved, "the last layer was not trained"
    assert model.config.num_hidden_layers == 2
    # a second run into the same directory is refused with a clear message and exit code 2
    assert (
        main(
            [
                "distill",
                "general",
                "--teacher",
                str(tiny_bert_dir),
                "--student",
                str(student),
                "--data",
                str(pregenerated),
                "--out",
                str(out),
                "--max_steps",
                "1",
            ]
        )
        == 2
    )


def make_trainer(tmp_path, teacher_dir, student_dir, data, config=None, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "ckpt"),
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    args = TrainingArguments(**{**settings, **overrides})
    return DistillationTrainer(
        model=AutoModelForMaskedLM.from_pretrained(student_dir),
        args=args,
        train_dataset=load_inputs(data),
        data_collator=PretrainingCollator(0),
        teacher=AutoModel.from_pretrained(teacher_dir),
        distill_config=config or DistillationConfig(losses=["attention", "hidden", "embedding"], layer_map="uniform"),
    )


def test_teacher_is_frozen_and_never_wrapped(tmp_path, tiny_bert_dir, tokenizer, pregenerated):
    student = make_tiny_bert(tmp_path / "student", tokenizer, seed=3)
    trainer = make_trainer(tmp_path, tiny_bert_dir, student, pregenerated)
    logged = []

    class Collect(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(dict(logs))

    trainer.add_callback(Collect())
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train()
    teacher = trainer.teacher
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert trainer.model_wrapped is not teacher and teacher not in list(trainer.model.modules())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized and not optimized & {id(p) for p in teacher.parameters()}
    steps = [entry for entry in logged if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:  # the total is the sum of the logged terms (all weights 1)
        terms = entry["loss_attention"] + entry["loss_hidden"] + entry["loss_embedding"]
        assert entry["loss"] == pytest.approx(terms, rel=1e-3)


def test_non_finite_loss_stops_with_the_step_and_cause(tmp_path, tiny_bert_dir, tokenizer, pregenerated):
    student = make_tiny_bert(tmp_path / "student", tokenizer, seed=3)
    trainer = make_trainer(tmp_path, tiny_bert_dir, student, pregenerated, save_steps=1, save_strategy="steps")
    with torch.no_grad():
        trainer.teacher.encoder.layer[1].output.dense.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"(?s)not finite at step 1 .*learning rate too high"):
        trainer.train()
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").glob("checkpoint-*"))


def test_decomposed_student_general_distillation(tmp_path, tiny_bert_dir, pregenerated):
    decompose_to_dir(tiny_bert_dir, tmp_path / "student", method="tucker", rank=16, layer_rank=8)
    out = tmp_path / "out"
    assert (
        main(
            [
                "distill",
                "general",
                "--teacher",
                str(tiny_bert_dir),
                "--student",
                str(tmp_path / "student"),
                "--data",
                str(pregenerated),
                "--out",
                str(out),
                "--max_steps",
                "3",
                "--report_to",
                "none",
                "--per_device_train_batch_size",
                "4",
                "--disable_tqdm",
                "true",
                "--layer-map",
                "uniform",
                "--embedding-loss",
            ]
        )
        == 0
    )
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.model_type == "bert" and model.config.quantization_config.method == "tucker"
    before = AutoModelForMaskedLM.from_pretrained(tmp_path / "student")
    trained, initial = model.bert.tensorslim_factors.groups["32x32"], before.bert.tensorslim_factors.groups["32x32"]
    assert all(not torch.equal(getattr(trained, n), getattr(initial, n)) for n in ("U", "P", "C", "V"))
    info = json.loads((out / "tensorslim_training.json").read_text())
    assert info["distillation"]["losses"] == ["attention", "hidden", "embedding"]
    assert info["metrics"]["train_loss"] > 0
