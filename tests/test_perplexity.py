"""Perplexity by the LLM compression papers' protocol, against the model's own loss per window."""

from __future__ import annotations

import math

import pytest
import torch

from tensorslim.compress.api import decompose
from tensorslim.errors import TensorslimError
from tensorslim.evaluate.perplexity import perplexity, read_text
from tiny_models import tiny_model, tiny_tokenizer


def words(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(3, 96, (n,), generator=g))


def test_perplexity_is_the_exp_of_the_mean_window_loss():
    """Independent reference: transformers' own causal-LM loss (mean over tokens 2..L) of each window."""
    model = tiny_model("llama", "causal_lm")
    tokenizer = tiny_tokenizer()
    text = words(100)
    result = perplexity(model, tokenizer, text, seq_length=16, batch_size=3)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert result["windows"] == 6 and result["tokens_scored"] == 6 * 15  # 100 // 16 windows, 4 tokens dropped
    with torch.no_grad():
        losses = [
            model(
                input_ids=torch.tensor([ids[i * 16 : (i + 1) * 16]]), labels=torch.tensor([ids[i * 16 : (i + 1) * 16]])
            ).loss
            for i in range(6)
        ]
    expected = torch.stack(losses).mean().item()
    assert result["nll"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # bits per byte: the same total in bits over the bytes of the scored words (each "wN" plus its space)
    scored_text = [" ".join(text.split()[i * 16 + 1 : (i + 1) * 16]) for i in range(6)]
    total_bytes = sum(len(t.encode()) for t in scored_text)
    assert result["bits_per_byte"] == pytest.approx(expected * 90 / math.log(2) / total_bytes, rel=1e-5)


def test_max_tokens_scores_a_prefix_and_a_student_scores_like_its_export():
    from tensorslim.compress.api import export_dense

    student, _ = decompose(tiny_model("gpt2", "causal_lm"), "tucker", rank=12, layer_rank=3)
    tokenizer = tiny_tokenizer()
    text = words(200)
    prefix = perplexity(student, tokenizer, text, seq_length=20, max_tokens=60)
    assert prefix["windows"] == 3
    dense = perplexity(export_dense(student), tokenizer, text, seq_length=20, max_tokens=60)
    assert prefix["perplexity"] == pytest.approx(dense["perplexity"], rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(seq_length=65), "beyond the model's context of 64 tokens"),
        (dict(seq_length=1), "too short"),
        (dict(seq_length=16, max_tokens=8), "shorter than one window"),
        (dict(seq_length=64), "fewer than one window of 64"),
    ],
)
def test_bad_lengths_are_refused(kwargs, message):
    with pytest.raises(TensorslimError, match=message):
        perplexity(tiny_model("llama", "causal_lm"), tiny_tokenizer(), words(40), **kwargs)


def test_wikitext_lines_are_joined_as_the_papers_do(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(" \n = Title = \n \n Text one .\n")
    # rows "", " = Title = \n", "", " Text one .\n" (HF wikitext) joined by "\n\n"
    assert read_text(path) == "\n\n = Title = \n" + "\n\n" + "" + "\n\n" + " Text one .\n"
    with pytest.raises(TensorslimError, match="does not exist"):
        read_text(tmp_path / "missing.raw")


def save_decoder(path, model_type: str = "llama"):
    """A tiny random causal LM of `model_type` with the tiny tokenizer, saved to `path`."""
    tiny_model(model_type, "causal_lm").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_evaluate_perplexity_writes_the_library_result_for_a_teacher_and_a_student(tmp_path, capsys):
    import json

    from tensorslim.cli import main
    from tensorslim.compress.api import decompose_to_dir

    teacher = save_decoder(tmp_path / "teacher")
    text_file = tmp_path / "wiki.test.raw"
    text_file.write_text(words(100) + "\n\n" + words(100, seed=1) + "\n")
    text = read_text(text_file)
    out = tmp_path / "scores"
    args = [
        "evaluate",
        "--model",
        str(teacher),
        "--perplexity",
        str(text_file),
        "--seq-length",
        "16",
        "--out",
        str(out),
    ]
    assert main([*args, "--batch-size", "4"]) == 0
    written = json.loads((out / "perplexity_results.json").read_text())
    expected = perplexity(tiny_model("llama", "causal_lm"), tiny_tokenizer(), text, seq_length=16)
    assert written["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
    assert written["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)
    assert (written["windows"], written["tokens_scored"], written["model"]) == (12, 12 * 15, str(teacher))
    assert "joined with blank lines" in written["protocol"] and "non-overlapping windows" in written["protocol"]
    table = capsys.readouterr().out
    assert f"{expected['perplexity']:.4f}" in table and "12 x 16 tokens" in table
    assert main(args) == 0  # its own results file is replaced

    # a student directory, scored where it lies (the default --out) at the default window: the context (64)
    student = tmp_path / "student"
    decompose_to_dir(teacher, student, "lowrank", rank=8)
    assert main(["evaluate", "--model", str(student), "--perplexity", str(text_file)]) == 0
    written = json.loads((student / "perplexity_results.json").read_text())
    in_memory, _ = decompose(tiny_model("llama", "causal_lm"), "lowrank", rank=8)
    expected = perplexity(in_memory, tiny_tokenizer(), text)
    assert (written["seq_length"], written["windows"]) == (64, 3)
    assert written["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
