"""Adversarial suite, decoders (issue 13): bad input to `evaluate --perplexity` and `decompose` on
causal LMs, refused before any work with one clear message.

A GGUF file (or a directory holding one) where a model directory belongs, a checkpoint of an
architecture tensorslim does not support, a model without a causal-LM head, a text shorter than one
window, a window beyond the model's context, compressions of 0% and 100%, and evaluate's two kinds
of flags mixed. Each case runs the real CLI in a subprocess: exit code 2, the message, no
traceback, no output left behind and every input byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cli_harness import assert_clean_failure, snapshot
from tiny_models import tiny_model, tiny_tokenizer


@dataclass
class Decoders:
    llama: Path  # tiny random Llama causal LM (context 64) with its tokenizer
    student: Path  # `decompose` of it
    neox: Path  # a GPT-NeoX causal LM: an architecture tensorslim does not support
    bert: Path  # a masked LM: no causal-LM head
    gguf: Path  # a file with GGUF's magic bytes
    gguf_dir: Path  # a directory holding only a .gguf file
    text: Path  # 300 words: 4 windows of 64 tokens
    short: Path  # 10 words
    binary: Path  # not UTF-8
    foreign: Path  # a directory holding a perplexity_results.json tensorslim did not write
    wikitext: Path  # wiki.valid.raw and wiki.test.raw of 600 words each (the decoder demo's text)

    def inputs(self) -> list[Path]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def words(n: int) -> str:
    g = torch.Generator().manual_seed(0)
    return " ".join(f"w{int(i)}" for i in torch.randint(3, 96, (n,), generator=g))


def save(model, path: Path) -> Path:
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> Decoders:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tensorslim.compress.api import decompose_to_dir

    root = tmp_path_factory.mktemp("decoders")
    llama = save(tiny_model("llama", "causal_lm"), root / "llama")
    student = root / "student"
    decompose_to_dir(llama, student, "lowrank", rank=8)
    neox_config = GPTNeoXConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    neox = save(GPTNeoXForCausalLM(neox_config), root / "neox")
    bert = save(tiny_model("bert", "masked_lm"), root / "bert")
    gguf = root / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    gguf_dir = root / "gguf-dir"
    gguf_dir.mkdir()
    (gguf_dir / "SmolLM2.Q4_1.gguf").write_bytes(gguf.read_bytes())
    (text := root / "text.txt").write_text(words(300) + "\n")
    (short := root / "short.txt").write_text(words(10) + "\n")
    (binary := root / "binary.txt").write_bytes(b"\xff\xfe\x00w3 w4" * 40)
    (foreign := root / "foreign").mkdir()
    (foreign / "perplexity_results.json").write_text('{"mine": true}\n')
    (wikitext := root / "wikitext").mkdir()
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        (wikitext / name).write_text("\n\n".join(words(60) for _ in range(10)) + "\n")
    return Decoders(llama, student, neox, bert, gguf, gguf_dir, text, short, binary, foreign, wikitext)


def x(name):
    """Placeholder for the input `name` in a case's argument list."""
    return ("input", name)


OUT = ("out",)
PPL = ["evaluate", "--model", x("llama"), "--perplexity", x("text"), "--out", OUT]
DECOMPOSE = ["decompose", "--teacher", x("llama"), "--out", OUT]
DEMO = ["demo", "--model", "llm", "--teacher", x("llama"), "--text-dir", x("wikitext"), "--out", OUT]


def case(id, base, extra, message, replace=None):
    args = [replace.get(a, a) if replace else a for a in base] + list(extra)
    return pytest.param(args, message, id=id)


CASES = [
    # what --model / --teacher is
    case("ppl-unsupported-architecture", PPL, [], "model type 'gpt_neox' is not supported", {x("llama"): x("neox")}),
    case("ppl-gguf-file", PPL, [], ("is a GGUF file", "convert_gguf"), {x("llama"): x("gguf")}),
    case("ppl-gguf-file-default-out", PPL[:-2], [], ("is a GGUF file", "convert_gguf"), {x("llama"): x("gguf")}),
    case("ppl-gguf-dir", PPL, [], ("SmolLM2.Q4_1.gguf is a GGUF file", "convert_gguf"), {x("llama"): x("gguf_dir")}),
    case("ppl-not-causal", PPL, [], "is not a causal language model", {x("llama"): x("bert")}),
    case("ppl-model-missing", PPL, [], "does not exist", {x("llama"): "/nonexistent/model"}),
    case("decompose-unsupported-architecture", DECOMPOSE, [], "'gpt_neox' is not supported", {x("llama"): x("neox")}),
    case("decompose-gguf-file", DECOMPOSE, [], ("is a GGUF file", "convert_gguf"), {x("llama"): x("gguf")}),
    case("decompose-gguf-dir", DECOMPOSE, [], ("is a GGUF file", "convert_gguf"), {x("llama"): x("gguf_dir")}),
    case("decompose-compression-0", DECOMPOSE, ["--compression", "0%"], "compression 0 is not between 0 and 1"),
    case("decompose-compression-100", DECOMPOSE, ["--compression", "100%"], "compression 1 is not between 0 and 1"),
    # calibration data of a data-aware decomposition (issue 14)
    case(
        "calibration-missing", DECOMPOSE, ["--calibration", "/nonexistent/text"], "calibration data /nonexistent/text"
    ),
    case("calibration-not-utf8", DECOMPOSE, ["--calibration", x("binary")], "looks binary"),
    case("calibration-shorter-than-a-window", DECOMPOSE, ["--calibration", x("short")], "not one packed sequence"),
    case(
        "calibration-fewer-tokens-than-the-width",
        DECOMPOSE,
        ["--calibration", x("text"), "--calibration-samples", "1", "--calibration-seq-length", "16"],
        "fewer than the input width 80",
    ),
    case("calibration-empty-dir", DECOMPOSE, ["--calibration", x("foreign")], "calibration data"),
    case(
        "calibration-samples-0", DECOMPOSE, ["--calibration", x("text"), "--calibration-samples", "0"], "out of range"
    ),
    case("calibration-damping-negative", DECOMPOSE, ["--calibration-damping", "-1"], "is negative"),
    # the text and the window
    case("ppl-text-too-short", PPL, [], "has 10 tokens, fewer than one window of 64", {x("text"): x("short")}),
    case(
        "ppl-student-text-too-short",
        PPL,
        [],
        "fewer than one window",
        {x("text"): x("short"), x("llama"): x("student")},
    ),
    case("ppl-seq-length-beyond-context", PPL, ["--seq-length", "65"], "beyond the model's context of 64 tokens"),
    case("ppl-seq-len-alias-beyond-context", PPL, ["--seq-len", "4096"], "beyond the model's context of 64 tokens"),
    case("ppl-seq-length-1", PPL, ["--seq-length", "1"], "--seq-length 1 is too short"),
    case("ppl-max-tokens-below-window", PPL, ["--seq-length", "16", "--max-tokens", "8"], "shorter than one window"),
    case("ppl-max-tokens-0", PPL, ["--max-tokens", "0"], "--max-tokens 0 is out of range"),
    case("ppl-text-missing", PPL, [], "does not exist", {x("text"): "/nonexistent/wiki.test.raw"}),
    case("ppl-text-is-dir", PPL, [], "is a directory", {x("text"): x("gguf_dir")}),
    case("ppl-text-not-utf8", PPL, [], "is not UTF-8 text", {x("text"): x("binary")}),
    # the run
    case("ppl-batch-size-0", PPL, ["--batch-size", "0"], "--batch-size 0 is out of range"),
    case("ppl-device-cuda", PPL, ["--device", "cuda"], "no CUDA GPU"),
    case("ppl-out-is-file", PPL, [], "is a file", {OUT: x("text")}),
    case("ppl-out-holds-a-foreign-results-file", PPL, [], "was not written by this command", {OUT: x("foreign")}),
    # evaluate's two kinds of flags
    case("ppl-with-task", PPL, ["--task", "SST-2", "--glue-dir", x("foreign")], "--perplexity does not take --task"),
    case("ppl-with-max-eval-samples", PPL, ["--max-eval-samples", "0"], "does not take --max-eval-samples"),
    case("seq-length-without-perplexity", PPL[:3] + PPL[5:], ["--seq-length", "16"], "only apply with --perplexity"),
    case("evaluate-neither-glue-nor-perplexity", PPL[:3] + PPL[5:], [], "needs --task and --glue-dir"),
    # the decoder demo (demo --model llm)
    case("demo-compression-0", DEMO, ["--compression", "0%"], "compression 0 is not between 0 and 1"),
    case("demo-compression-100", DEMO, ["--compression", "20%", "100%"], "compression 1 is not between 0 and 1"),
    case("demo-compression-unreadable", DEMO, ["--compression", "half"], "cannot read the compression 'half'"),
    case("demo-encoder-flag", DEMO, ["--task", "SST-2"], "--model llm does not take --task"),
    case("demo-not-causal", DEMO, [], "is not a causal language model", {x("llama"): x("bert")}),
    case("demo-text-dir-missing", DEMO, [], "wiki.valid.raw not found", {x("wikitext"): x("foreign")}),
    case("demo-seq-length-beyond-context", DEMO, ["--seq-length", "65"], "beyond the model's context of 64 tokens"),
    case("demo-max-tokens-below-window", DEMO, ["--seq-length", "32", "--max-tokens", "16"], "--max-tokens 16"),
    case("demo-heal-steps-0", DEMO, ["--heal-steps", "0"], "--heal-steps 0 is out of range"),
    case(
        "demo-heal-method-not-made", DEMO, ["--method", "lowrank", "--heal-method", "tucker"], "is not among --method"
    ),
    case("demo-out-is-input", DEMO, [], "the input", {OUT: x("wikitext")}),
]


def resolve(args: list, d: Decoders, tmp: Path) -> list[str]:
    return [
        str(getattr(d, a[1])) if isinstance(a, tuple) and a[0] == "input" else str(tmp / "out") if a == OUT else a
        for a in args
    ]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_decoder_input_is_refused_before_any_work(cli, decoders, tmp_path, args, message):
    argv = resolve(args, decoders, tmp_path)
    before = {p: snapshot(p) for p in [*decoders.inputs(), tmp_path]}
    result = cli(*argv)
    assert_clean_failure(result, message)
    assert not (tmp_path / "out").exists(), f"an output directory was left behind:\n{result}"
    for p, state in before.items():
        assert snapshot(p) == state, f"{p} changed:\n{result}"


def test_the_same_inputs_score_once_the_mistake_is_fixed(cli, decoders, tmp_path):
    """The cases above fail for the reason they name: the corrected command succeeds."""
    result = cli("evaluate", "--model", decoders.student, "--perplexity", decoders.text, "--out", tmp_path / "out")
    assert result.code == 0, str(result)
    assert "perplexity" in result.stdout and (tmp_path / "out" / "perplexity_results.json").is_file()
    result = cli("decompose", "--teacher", decoders.llama, "--out", tmp_path / "s", "--compression", "20%")
    assert result.code == 0, str(result)
    result = cli(
        "decompose", "--teacher", decoders.llama, "--out", tmp_path / "c", "--calibration", decoders.text,
        "--calibration-seq-length", "32",
    )  # fmt: skip
    assert result.code == 0, str(result)
    record = json.loads((tmp_path / "c" / "decomposition.json").read_text())
    assert record["calibration"]["tokens"] >= 80 and 0 < record["calibrated_error"] < 1
