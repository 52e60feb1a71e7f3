"""General distillation of causal LMs (healing): a tiny Llama teacher, its decomposed students,
plain text packed into fixed-length sequences, the token KL objective, resume and bad pairs."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import tensorslim  # noqa: F401 - loads decomposed students in from_pretrained
from tensorslim.cli import main
from tensorslim.compress.api import decompose_to_dir
from tensorslim.distill.trainer import DistillationTrainer
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

SEQ = 16
TRAIN = [
    "--seq-length",
    str(SEQ),
    "--per_device_train_batch_size",
    "4",
    "--logging_steps",
    "1",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]


def save_llama(path: Path, seed: int = 0, **overrides) -> Path:
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"
    tiny_model("llama", "causal_lm", seed=seed, **overrides).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_text(path: Path, documents: int, seed: int = 0) -> Path:
    """Documents of word-level tokens w3..w95 (a blank line between documents)."""
    rng = random.Random(seed)
    lines = lambda: "\n".join(" ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(12)) for _ in range(4))  # noqa: E731
    path.write_text("\n\n".join(lines() for _ in range(documents)) + "\n")
    return path


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama teacher with peaked next-token distributions, a rank-4 lowrank student, the
    full-rank (exact) student, and a corpus of about 2,000 tokens."""
    root = tmp_path_factory.mktemp("llm")
    teacher = save_llama(root / "teacher", initializer_range=0.2)
    decompose_to_dir(teacher, root / "student", method="lowrank", rank=4)
    decompose_to_dir(teacher, root / "exact", method="lowrank", rank=32)
    return {
        "teacher": teacher,
        "student": root / "student",
        "exact": root / "exact",
        "corpus": write_text(root / "c.txt", 40),
    }


def distill(llm, out: Path, *extra, student: str = "student", corpus: Path | None = None) -> int:
    return main(
        [
            "distill",
            "general",
            "--teacher",
            str(llm["teacher"]),
            "--student",
            str(llm[student] if student in llm else student),
            "--corpus",
            str(corpus or llm["corpus"]),
            "--out",
            str(out),
            *TRAIN,
            *extra,
        ]
    )


def token_kl(student_dir: Path, teacher_dir: Path, ids: torch.Tensor) -> float:
    """Mean over positions of KL(teacher || student) of the next-token distributions (torch's kl_div)."""
    with torch.no_grad():
        s = AutoModelForCausalLM.from_pretrained(student_dir).eval()(ids).logits
        t = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()(ids).logits
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    return kl.mean().item()


def test_healing_lowers_the_students_kl_to_the_teacher(llm, tmp_path):
    out = tmp_path / "out"
    assert distill(llm, out, "--max_steps", "12", "--learning_rate", "3e-3", "--save_steps", "6") == 0
    info = json.loads((out / "tensorslim_training.json").read_text())
    assert info["distillation"]["losses"] == ["token_kl"] and info["distillation"]["temperature"] == 1.0
    assert info["seq_length"] == SEQ and info["global_step"] == 12
    assert info["train_examples"] == (40 * 4 * 12 + 40) // SEQ  # 40 documents of 48 words, each ended
    ids = torch.randint(3, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(5))  # held-out text
    before, after = token_kl(llm["student"], llm["teacher"], ids), token_kl(out, llm["teacher"], ids)
    assert after < 0.8 * before, (before, after)
    logged = [entry["loss_token_kl"] for entry in info["log_history"] if "loss_token_kl" in entry]
    assert sum(logged[-3:]) < sum(logged[:3])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-6"]


def first_step(out: Path) -> dict:
    return json.loads((out / "tensorslim_training.json").read_text())["log_history"][0]


def test_the_full_rank_student_starts_at_zero_on_every_term(llm, tmp_path):
    """The exact (full-rank) student computes the teacher's function: next-token KL, causal
    attention scores and hidden states all match before any step; the rank-4 student's do not."""
    config = tmp_path / "objective.json"
    config.write_text(json.dumps({"losses": ["token_kl", "attention", "hidden"], "layer_map": "uniform"}))
    for student in ("exact", "student"):
        out = tmp_path / student
        assert (
            distill(
                llm, out, "--max_steps", "1", "--distill-config", str(config), "--temperature", "2", student=student
            )
            == 0
        )
        assert json.loads((out / "tensorslim_training.json").read_text())["distillation"]["temperature"] == 2.0
        terms = [first_step(out)[f"loss_{name}"] for name in ("token_kl", "attention", "hidden")]
        if student == "exact":
            assert terms == pytest.approx([0, 0, 0], abs=2e-6)
        else:
            assert min(terms) > 1e-3, terms


def signal_at_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process during optimizer step `step` (1-based), as `kill` would send it."""
    original = DistillationTrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", training_step)


def test_interrupted_healing_resumes_to_the_uninterrupted_weights(llm, tmp_path, monkeypatch):
    flags = ["--max_steps", "6", "--save_steps", "100", "--learning_rate", "3e-3"]
    assert distill(llm, tmp_path / "reference", *flags) == 0
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        signal_at_step(patch, 3)
        assert distill(llm, out, *flags) == 130
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (out / "config.json").exists()
    assert distill(llm, out, *flags, "--resume") == 0
    reference, resumed = load_file(tmp_path / "reference" / "model.safetensors"), load_file(out / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-7)


def swapped_tokenizer():
    """The tiny vocabulary with w3 and w4 exchanged: same size, different tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, **{f"w{i}": i for i in range(3, VOCAB)}, "w3": 4, "w4": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def bad_student(kind: str, path: Path) -> Path:
    if kind == "vocabulary":
        return save_llama(path, vocab_size=VOCAB + 32)
    if kind == "tokenizer":
        save_llama(path)
        swapped_tokenizer().save_pretrained(path)
        return path
    if kind == "encoder":
        tiny_model("bert", "masked_lm").save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        return path
    return save_llama(path, hidden_size=48)  # "width"


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("vocabulary", [], "the teacher's vocabulary has 96 tokens, the student's 128"),
        ("tokenizer", [], "have different vocabularies"),
        ("encoder", [], "is a causal LM but the student (bert) is an encoder"),
        ("width", ["--layer-map", "uniform", "--embedding-loss"], "teacher has hidden_size 32 and the student 48"),
    ],
)
def test_a_student_that_cannot_match_the_teacher_is_refused(llm, tmp_path, caplog, kind, extra, message):
    student = bad_student(kind, tmp_path / kind)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"losses": ["token_kl", "hidden"]}))
    extra = [*extra, "--distill-config", str(config)] if kind == "width" else extra
    assert distill(llm, tmp_path / "out", "--max_steps", "1", *extra, student=str(student)) == 2
    assert message in caplog.text and "tensorslim decompose --teacher" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seq-length", "200"], "--seq-length 200 is out of range for this model (1 to 64 tokens)"),
        (["--eval-data", "x"], "--eval-data is pregenerated data; --corpus trains on text"),
    ],
)
def test_bad_settings_are_refused_before_any_work(llm, tmp_path, caplog, extra, message):
    assert distill(llm, tmp_path / "out", "--max_steps", "1", *extra) == 2
    assert message in caplog.text and not (tmp_path / "out").exists()


def test_a_corpus_shorter_than_one_sequence_is_refused(llm, tmp_path, caplog):
    short = tmp_path / "short.txt"
    short.write_text("w3 w4 w5 w6\n")
    assert distill(llm, tmp_path / "out", "--max_steps", "1", corpus=short) == 2
    assert f"the corpus holds fewer than {SEQ} tokens" in caplog.text and not (tmp_path / "out").exists()


def test_fsdp_on_cpu_is_refused_not_silently_dropped(llm, tmp_path, caplog):
    """accelerate enables FSDP only on accelerators; on CPU the Trainer would train unsharded."""
    assert distill(llm, tmp_path / "out", "--max_steps", "1", "--fsdp") == 2
    assert "--fsdp needs GPUs" in caplog.text and not (tmp_path / "out").exists()


def test_under_bf16_the_frozen_teacher_is_kept_in_bf16(llm, tmp_path):
    """Half the teacher's memory on every worker; the student trains in float32 under autocast."""
    from transformers import TrainingArguments, default_data_collator

    from tensorslim.data.packing import packed_dataset
    from tensorslim.distill.config import DistillationConfig

    tokenizer = tiny_tokenizer()
    args = TrainingArguments(
        str(tmp_path), bf16=True, use_cpu=True, max_steps=2, per_device_train_batch_size=4, report_to="none"
    )
    trainer = DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(llm["student"]),
        args=args,
        train_dataset=packed_dataset([llm["corpus"]], tokenizer, SEQ, max_sequences=8),
        data_collator=default_data_collator,
        teacher=AutoModelForCausalLM.from_pretrained(llm["teacher"]),
        distill_config=DistillationConfig(losses=["token_kl"]),
    )
    assert {p.dtype for p in trainer.teacher.parameters()} == {torch.bfloat16}
    metrics = trainer.train().metrics
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert 0 < metrics["train_loss"] < float("inf")
