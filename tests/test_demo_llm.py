"""The decoder demo (`tensorslim demo --model llm`) end to end on a tiny Llama and a small word-level
text: every stage's output, the report with every section and plot, and a rerun that reuses them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from tensorslim.compress.loading import load_model
from tensorslim.evaluate.perplexity import perplexity, read_text
from tensorslim.pipeline.demo_llm import LlmDemoSettings, run_llm_demo
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.slow


def write_wikitext(root: Path, seed: int = 0) -> Path:
    """wiki.valid.raw and wiki.test.raw of word-level tokens w3..w95 (articles as WikiText lays them out)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for name, articles in (("wiki.valid.raw", 30), ("wiki.test.raw", 6)):
        parts = []
        for a in range(articles):
            body = "\n".join(" " + " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(20)) for _ in range(3))
            parts.append(f" = w{3 + a % 90} = \n\n{body}\n\n")
        (root / name).write_text("".join(parts))
    return root


def save_llama(path: Path) -> Path:
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"
    tiny_model("llama", "causal_lm", initializer_range=0.2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_settings(root: Path, **overrides) -> LlmDemoSettings:
    values = dict(
        out=root / "run",
        teacher=save_llama(root / "llama") if not (root / "llama").exists() else root / "llama",
        text_dir=root / "wikitext" if (root / "wikitext").exists() else write_wikitext(root / "wikitext"),
        compressions=[0.2, 0.4],
        max_iter=1,
        seq_length=16,
        max_tokens=64,
        calibration_samples=8,
        calibration_seq_length=16,
        heal_steps=4,
        eval_steps=2,
        batch_size=2,
        heal_seq_length=16,
        heal_eval_sequences=2,
        learning_rate=1e-3,
        prompts=["w5 w6 w7", "w10 w11"],
        new_tokens=4,
        decode_prompt_tokens=4,
        decode_new_tokens=4,
        decode_seconds=0.05,
    )
    return LlmDemoSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_llm")
    settings = tiny_settings(root)
    return settings, run_llm_demo(settings)


NAMES = [f"{m} {p}%" for p in (20, 40) for m in ("lowrank", "shared", "tucker")]


def test_every_stage_ran_and_wrote_its_output(demo):
    s, run = demo
    stages = [st["name"] for st in run["stages"]]
    expected = ["data", "perplexity dense", "calibration"]
    expected += [f"{kind} {name}" for name in NAMES for kind in ("decompose", "perplexity")]
    best = min(("lowrank", "shared", "tucker"), key=lambda m: run["perplexity"][f"{m} 20%"]["perplexity"])
    expected += [f"heal {best} 20%", f"perplexity {best} 20% healed"]  # by default the best student heals
    assert sorted(stages) == sorted(expected + ["decode speed", "continuations"])
    out = s.out
    heldout, train = (out / "data" / "heldout.txt").read_text(), (out / "data" / "train.txt").read_text()
    assert heldout + train == (s.text_dir / "wiki.valid.raw").read_text()  # held out, never trained on
    for name in NAMES:
        key = name.replace(" ", "-").rstrip("%")
        record = json.loads((out / "students" / key / "decomposition.json").read_text())
        assert record["calibration"]["data"] == str(out / "data" / "train.txt")
        assert (
            record["decomposed_weights"]["student"]
            <= (1 - int(name.split()[1][:-1]) / 100) * record["decomposed_weights"]["teacher"]
        )
    assert [p.name for p in (out / "healed").iterdir()] == [f"{best}-20"]
    assert (out / "healed" / f"{best}-20" / "model.safetensors").is_file()


def test_perplexities_are_those_of_the_saved_models(demo):
    s, run = demo
    tokenizer = tiny_tokenizer()
    text = read_text(s.text_dir / "wiki.test.raw")
    for name, model_dir in (
        ("dense", s.teacher),
        ("tucker 40%", s.out / "students" / "tucker-40"),
        *[(f"{n} healed", s.out / "healed" / n.replace(" ", "-").rstrip("%")) for n in run["healing"]["curves"]],
    ):
        expected = perplexity(load_model(model_dir, "causal_lm"), tokenizer, text, seq_length=16, max_tokens=64)
        assert run["perplexity"][name]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
        assert run["perplexity"][name]["tokens_scored"] == 4 * 15


def test_healing_curve_is_logged_from_step_0(demo):
    _, run = demo
    assert len(run["healing"]["curves"]) == 1
    for name, history in run["healing"]["curves"].items():
        evals = [e["step"] for e in history if "eval_loss" in e]
        assert evals[0] == 0 and sorted(set(evals)) == [0, 2, 4], name  # and the final evaluation


def test_report_has_every_section_and_plot(demo):
    s, run = demo
    report = s.out / "report"
    md = (report / "report.md").read_text()
    for title in (
        "Perplexity against compression",
        "Healing",
        "Decode speed",
        "Continuations",
        "Time per stage",
        "Settings",
    ):
        assert f"## {title}" in md
    assert f"{run['perplexity']['tucker 40%']['perplexity']:.4g}" in md
    assert "the first 64 tokens in 4 windows of 16" in md
    (healed,) = [f"{n} healed" for n in run["healing"]["curves"]]
    first = [f"{m} 20%" for m in ("lowrank", "shared", "tucker")]
    timed = {"dense", healed, *[n for n in first if not healed.startswith(n)]}
    assert set(run["speed"]["tokens_per_second"]) == timed
    said = run["continuations"]
    assert set(said) == {"dense", *first, healed}
    assert all(len(texts) == 2 for texts in said.values())
    assert f"| dense | {said['dense'][0]} |" in md
    for png in ("perplexity_vs_compression.png", "healing.png"):
        with Image.open(report / "plots" / png) as image:
            image.verify()
    assert (report / "report.html").is_file()


def test_rerun_reuses_every_stage(demo, caplog):
    s, run = demo
    before = (s.out / "stages.json").read_text()
    with caplog.at_level("INFO", logger="tensorslim.pipeline.stages"):
        again = run_llm_demo(s)
    reused = {st["name"] for st in again["stages"] if st["reused"]}
    assert reused == {st["name"] for st in run["stages"]} - {"calibration"}  # nothing needed the moments
    assert "calibration" not in {st["name"] for st in again["stages"]}
    assert again["perplexity"] == run["perplexity"] and again["continuations"] == run["continuations"]
    assert json.loads((s.out / "stages.json").read_text()).keys() == json.loads(before).keys()
