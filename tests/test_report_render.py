"""The compression report (tensorslim.report.render / plots): built from a real tiny decomposition
and real describe() measurements, checked against the input numbers, parsed as HTML/XML, and
opened in headless Chromium when it is installed."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tensorslim.compress.api import decompose_to_dir
from tensorslim.errors import TensorslimError
from tensorslim.report.formats import fmt_int, fmt_percent, fmt_ratio, fmt_seconds, fmt_si
from tensorslim.report.plots import loss_points, retained_energy
from tensorslim.report.render import render_report
from tensorslim.report.summary import describe
from tensorslim.report.timing import Comparison, judge, speed_record

pytestmark = pytest.mark.xdist_group("report_render")  # one worker builds the module fixtures once

STUDENTS = [("tucker l=12 d=8", 8, 12), ("tucker l=24 d=16", 16, 24)]  # (name, rank, layer_rank)


def _history(n: int, start: float, with_eval: bool = False) -> list[dict]:
    """A Trainer-like log_history: loss entries, optional eval entries and the final summary."""
    hist = [
        {"loss": start * 0.9**i, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": i / n, "step": 5 * (i + 1)}
        for i in range(n)
    ]
    if with_eval:
        hist += [{"eval_loss": start * 0.9**i + 0.1, "step": 5 * (i + 1), "epoch": i / n} for i in range(0, n, 4)]
    return hist + [{"train_runtime": 3.2, "train_loss": start / 2, "step": 5 * n, "epoch": 1.0}]


def fake_speed(per_batch: dict[str, float], foreign_cores: float = 0.0) -> dict:
    """A speed record as timing.measure_models writes it, from steady fabricated round times
    (seconds per batch of 2 sequences of 16 tokens; the first model is the baseline)."""
    times = {name: [t * 0.99, t, t * 1.01, t * 0.98, t * 1.02] for name, t in per_batch.items()}  # spread 2%
    result = Comparison(next(iter(per_batch)), [judge(times, foreign_cores, 2)], 2)
    return speed_record(result, batch_size=2, seq_len=16, device="cpu", threads=2, warnings=[])


SPEED = {"teacher": 0.02, "tucker l=12 d=8": 0.01, "tucker l=24 d=16": 0.016}  # seconds per batch
BASELINE = {"predictor": "always the majority train label 'positive' (55.0%)", "dev": {"accuracy": 0.5, "score": 0.5}}


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> dict:
    """A run dict from two real students of the tiny BERT; fabricated speed, baseline and scores."""
    root = tmp_path_factory.mktemp("report_models")
    measure = {"seq_len": 16}
    students = []
    for i, (name, rank, layer_rank) in enumerate(STUDENTS):
        path = root / f"student{i}"
        record = decompose_to_dir(tiny_bert_dir, path, rank=rank, layer_rank=layer_rank)
        students.append(
            {
                "name": name,
                "path": str(path),
                "decomposition": record,
                "report": describe(path, **measure),
                "dev": {"accuracy": 0.80 + 0.05 * i, "score": 0.80 + 0.05 * i, "eval_loss": 0.5 - 0.1 * i},
                "log_history": {
                    "general": _history(20, 3.0 - i),
                    "task_stage1": _history(12, 1.0, with_eval=True),
                    "task_stage2": [],
                },
            }
        )
    return {
        "title": "Tiny report",
        "task": "SST-2",
        "metric": "accuracy",
        "teacher": {
            "path": str(tiny_bert_dir),
            "dev": {"accuracy": 0.9, "score": 0.9, "eval_loss": 0.3},
            "report": describe(tiny_bert_dir, **measure),
        },
        "students": students,
        "speed": fake_speed(SPEED),
        "baseline": BASELINE,
        "stages": [
            {"name": "finetune", "seconds": 90.0, "path": "runs/teacher"},
            {"name": "decompose", "seconds": 2.5},
            {"name": "general distillation", "seconds": 7.5},
        ],
        "settings": {"command": "tensorslim demo --out runs/x", "versions": {"torch": "2.x"}, "threads": 2},
    }


@pytest.fixture(scope="module")
def rendered(run, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("report") / "out"
    return out, render_report(run, out)


def md_table(markdown: str, section: str) -> dict[str, list[str]]:
    """The first table under '## section' as {first cell: all cells}, header row under key 'header'."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in body.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in row] for row in rows]
    return {"header": rows[0], **{row[0]: row for row in rows[1:]}}


def number(cell: str) -> float:
    return float(re.sub(r"[,x%*]", "", cell))


# ----------------------------------------------------------------------------- files and images


def test_writes_report_files_and_valid_pngs(rendered):
    out, written = rendered
    assert set(written) == {
        "report.md",
        "report.html",
        "plots/score_vs_size.png",
        "plots/loss.png",
        "plots/spectra_1.png",
        "plots/reconstruction_error_1_tucker-l-12-d-8.png",
        "plots/reconstruction_error_2_tucker-l-24-d-16.png",
    }
    for rel, path in written.items():
        assert path == out / rel and path.is_file() and path.stat().st_size > 0
        if rel.endswith(".png"):
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 200 and image.height > 150
                image.verify()
    assert not [p for p in out.rglob("*.tmp")], "temporary files left behind"


def test_reconstruction_heatmap_has_one_cell_per_layer_and_slot(run, tmp_path):
    """The heatmap draws the record's (layers x slots) errors: its pixels change with the values."""
    from tensorslim.report.plots import error_heatmap

    dec = run["students"][0]["decomposition"]
    assert len(dec["relative_error_per_layer_slot"]) == 2 and len(dec["slots"]) == 12
    low = dict(dec, relative_error_per_layer_slot=[[0.0] * 12, [0.0] * 12])
    high = dict(dec, relative_error_per_layer_slot=[[1.0] * 12, [1.0] * 12])
    a, b = error_heatmap(low, tmp_path / "a.png"), error_heatmap(high, tmp_path / "b.png")
    with Image.open(a) as ia, Image.open(b) as ib:
        assert ia.size == ib.size and ia.convert("RGB").tobytes() != ib.convert("RGB").tobytes()


# ----------------------------------------------------------------------------- numbers


def test_markdown_parameter_table_equals_the_inputs(run, rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    table = md_table(md, "Parameters")
    assert table["header"][:7] == [
        "model",
        "embeddings",
        "encoder: factors",
        "encoder: dense",
        "encoder",
        "pooler + head",
        "total",
    ]
    t = run["teacher"]["report"]["parameters"]
    for name, model in [("teacher", run["teacher"])] + [(s["name"], s) for s in run["students"]]:
        p, row = model["report"]["parameters"], table[name]
        assert [int(number(c)) for c in row[1:7]] == [
            p["embeddings"],
            p["encoder_factors"],
            p["encoder_dense"],
            p["encoder"],
            p["pooler"] + p["head"],
            p["total"],
        ]
        if name != "teacher":
            # compression ratios: teacher / student, shown rounded to 2 (below 10x) or 1 decimals
            assert number(row[7]) == pytest.approx(t["encoder"] / p["encoder"], abs=0.051)
            assert number(row[8]) == pytest.approx(t["total"] / p["total"], abs=0.051)
            assert p["encoder_factors"] == model["decomposition"]["decomposed_weights"]["student"]
    assert re.search(r"\d,\d{3}", table["teacher"][6]), "large counts use thousands separators"


def test_markdown_scores_speed_and_stages_equal_the_inputs(run, rendered):
    out, _ = rendered
    md = (out / "report.md").read_text()
    scores, speed, stages = md_table(md, "Dev scores"), md_table(md, "Speed"), md_table(md, "Time per stage")
    assert scores["header"][:4] == ["model", "**accuracy**", "% of teacher", "margin kept"]
    assert speed["header"] == ["model", "FLOPs / token", "FLOPs reduction", "sequences / s", "spread", "speed-up"]
    for s in run["students"]:
        row = scores[s["name"]]
        assert number(row[1]) == pytest.approx(s["dev"]["accuracy"])
        assert number(row[2]) == pytest.approx(100 * s["dev"]["accuracy"] / 0.9, abs=0.051)  # 88.9%, 94.4%
        assert number(row[3]) == pytest.approx(100 * (s["dev"]["accuracy"] - 0.5) / (0.9 - 0.5), abs=0.051)
        assert number(speed[s["name"]][3]) == pytest.approx(2 / SPEED[s["name"]], abs=0.051)
        assert number(speed[s["name"]][5]) == pytest.approx(SPEED["teacher"] / SPEED[s["name"]], abs=0.006)
        flops = run["teacher"]["report"]["flops_per_token"] / s["report"]["flops_per_token"]
        assert number(speed[s["name"]][2]) == pytest.approx(flops, abs=0.006)
    assert scores["tucker l=12 d=8"][2:4] == ["88.9%", "75.0%"] and scores["tucker l=24 d=16"][2:4] == [
        "94.4%",
        "87.5%",
    ]
    assert scores["teacher"][2:4] == ["100.0%", "100.0%"]
    assert scores["constant baseline"][1] == "0.5" and "majority train label" in md
    assert speed["tucker l=12 d=8"][5] == "2.00x" and speed["teacher"][4] == "2.0%"
    summary = md_table(md, "Summary")
    assert summary["tucker l=12 d=8"][4] == "2.00x" and summary["tucker l=12 d=8"][6:8] == ["88.9%", "75.0%"]
    assert stages["finetune"][1:3] == ["1 min 30 s", "90.0%"] and stages["decompose"][1:] == ["2.5 s", "2.5%", ""]
    assert stages["**total**"][1] == "**1 min 40 s**"
    assert "`runs/teacher`" in stages["finetune"][3]
    assert "batch 2, sequence length 16" in md


def test_formatters_by_hand():
    assert fmt_int(1234567) == "1,234,567" and fmt_int(None) == "n/a"
    assert fmt_ratio(14.83) == "14.8x" and fmt_ratio(1.974) == "1.97x" and fmt_ratio(float("nan")) == "n/a"
    assert fmt_percent(0.9123) == "91.2%"
    assert fmt_seconds(12.34) == "12.3 s" and fmt_seconds(125) == "2 min 05 s" and fmt_seconds(7380) == "2 h 03 min"
    assert fmt_si(22413312) == "22.4 M" and fmt_si(51200) == "51.2 k"


def test_plot_helpers_by_hand():
    assert retained_energy([3.0, 4.0], 1) == pytest.approx(9 / 25)
    assert retained_energy([3.0, 4.0], 2) == 1.0
    hist = [
        {"loss": 1.0, "step": 1},
        {"eval_loss": 2.0, "step": 1},
        {"loss": float("nan"), "step": 2},
        {"loss": 0.5, "step": 3},
        {"train_loss": 0.7, "step": 3},
    ]
    assert loss_points(hist) == ([1.0, 3.0], [1.0, 0.5])
    assert loss_points(hist, "eval_loss") == ([1.0], [2.0])


# ----------------------------------------------------------------------------- HTML


class TagBalance(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_html_is_well_formed_and_every_image_resolves(rendered):
    out, written = rendered
    text = (out / "report.html").read_text()
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    ET.fromstring(text.removeprefix("<!DOCTYPE html>\n"))  # also well-formed XML
    srcs = [img["src"] for img in parser.images]
    assert all(img.get("alt") for img in parser.images)
    assert sorted(srcs) == sorted(rel for rel in written if rel.endswith(".png"))
    for src in srcs:
        assert not re.match(r"^[a-z]+:|^/", src) and (out / src).is_file()
    assert not re.search(r"(href|src)=\"(https?:)?//", text), "no external resources"


def test_text_is_escaped_in_html_and_markdown(run, tmp_path):
    run = copy.deepcopy(run)
    run["title"] = "<script>alert(1)</script> & co"
    run["students"][0]["name"] = "evil <b>name</b> | pipe"
    run["speed"] = fake_speed({"teacher": 0.02, "evil <b>name</b> | pipe": 0.01, "tucker l=24 d=16": 0.016})
    written = render_report(run, tmp_path / "out")
    text = written["report.html"].read_text()
    assert "<script>alert(1)" not in text and "<b>name" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text and "evil &lt;b&gt;name&lt;/b&gt; | pipe" in text
    parser = TagBalance()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []
    md = written["report.md"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| evil"))
    assert row.startswith(r"| evil \<b\>name\</b\> \| pipe | ")
    assert len(re.split(r"(?<!\\)\|", row)) == 10  # 8 columns, the escaped pipe does not add one


# ----------------------------------------------------------------------------- validation and edge cases


@pytest.mark.parametrize(
    "where, key",
    [
        ((), "title"),
        ((), "stages"),
        (("teacher",), "report"),
        (("teacher", "report", "parameters"), "encoder"),
        (("students", 1, "decomposition"), "spectra"),
        (("students", 0, "dev"), "accuracy"),
        (("speed",), "trusted"),
        (("speed", "seconds", "teacher"), "spread"),
        (("stages", 2), "seconds"),
    ],
)
def test_missing_key_raises_naming_it(run, tmp_path, where, key):
    run = copy.deepcopy(run)
    parent = run
    for step in where:
        parent = parent[step]
    del parent[key]
    with pytest.raises(TensorslimError, match=re.escape(repr(key))) as err:
        render_report(run, tmp_path / "out")
    assert "fix:" in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing is written for an invalid run"


def test_bad_values_raise(run, tmp_path):
    bad = copy.deepcopy(run)
    bad["stages"][0]["seconds"] = "ninety"
    with pytest.raises(TensorslimError, match=r"run\['stages'\]\[0\]\['seconds'\] must be a number"):
        render_report(bad, tmp_path)
    bad = copy.deepcopy(run)
    bad["students"][1]["name"] = bad["students"][0]["name"]
    with pytest.raises(TensorslimError, match="names repeat"):
        render_report(bad, tmp_path)
    bad["students"][1]["name"] = "teacher"
    with pytest.raises(TensorslimError, match="reserved name 'teacher'"):
        render_report(bad, tmp_path)
    bad = copy.deepcopy(run)
    bad["students"][0]["decomposition"]["relative_error_per_layer_slot"][0].pop()
    with pytest.raises(TensorslimError, match="relative_error_per_layer_slot"):
        render_report(bad, tmp_path)


def test_no_students_and_no_logs_still_render(run, tmp_path):
    only_teacher = dict(copy.deepcopy(run), students=[], settings={})
    only_teacher["teacher"]["path"] = Path(only_teacher["teacher"]["path"])  # path-likes are accepted
    written = render_report(only_teacher, tmp_path / "a")
    assert set(written) == {"report.md", "report.html"}
    md = written["report.md"].read_text()
    assert "0 students" in md and "## Decomposition" not in md and "## Settings" not in md
    assert md_table(md, "Models")["teacher"][1] == f"`{run['teacher']['path']}`"

    no_logs = copy.deepcopy(run)
    no_logs["students"][0].pop("log_history")
    no_logs["students"][1]["log_history"] = {"general": [{"train_runtime": 1.0, "step": 0}]}
    no_logs["students"][1]["dev"]["accuracy"] = None  # evaluation failed: shown as n/a, not plotted
    written = render_report(no_logs, tmp_path / "b")
    assert "plots/loss.png" not in written and "plots/score_vs_size.png" in written
    assert md_table(written["report.md"].read_text(), "Dev scores")["tucker l=24 d=16"][1:3] == ["**n/a**", "n/a"]


def test_busy_or_missing_speed_prints_no_speed_up(run, tmp_path):
    busy = dict(copy.deepcopy(run), speed=fake_speed(SPEED, foreign_cores=1.4))
    md = render_report(busy, tmp_path / "busy")["report.md"].read_text()
    speed, summary = md_table(md, "Speed"), md_table(md, "Summary")
    assert speed["tucker l=12 d=8"][5] == "not measured" and summary["tucker l=12 d=8"][4] == "not measured"
    assert re.search(r"Could not measure the speed on cpu, [^:]*: the machine was busy", md)
    assert "other processes used 1.40 of 2 cores" in md
    assert number(speed["tucker l=12 d=8"][3]) == pytest.approx(200.0)  # the medians are still shown

    bare = copy.deepcopy(run)
    del bare["speed"], bare["baseline"]
    md = render_report(bare, tmp_path / "bare")["report.md"].read_text()
    assert md_table(md, "Speed")["tucker l=12 d=8"][3:] == ["n/a", "n/a", "not measured"]
    assert "Speed was not measured" in md and md_table(md, "Dev scores")["tucker l=12 d=8"][3] == "n/a"
    assert "constant baseline" not in md_table(md, "Dev scores")

    partial = copy.deepcopy(run)
    del partial["speed"]["sequences_per_second"]["tucker l=24 d=16"]
    with pytest.raises(TensorslimError, match=r"run\['speed'\] has no measurement of \['tucker l=24 d=16'\]"):
        render_report(partial, tmp_path / "partial")


def test_rerender_replaces_plots_and_refuses_foreign_plot_dirs(run, tmp_path):
    out = tmp_path / "out"
    render_report(run, out)
    one = dict(copy.deepcopy(run), students=run["students"][:1])
    written = render_report(one, out)
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == sorted(Path(rel).name for rel in written if rel.endswith(".png"))
    assert "reconstruction_error_2_tucker-l-24-d-16.png" not in pngs

    foreign = tmp_path / "foreign"
    (foreign / "plots").mkdir(parents=True)
    (foreign / "plots" / "mine.png").write_bytes(b"x")
    with pytest.raises(TensorslimError, match="not written by tensorslim"):
        render_report(one, foreign)
    assert (foreign / "plots" / "mine.png").read_bytes() == b"x"
    render_report(one, foreign, overwrite=True)
    assert not (foreign / "plots" / "mine.png").exists()


# ----------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium chromium-driver")
def test_report_renders_in_headless_chromium(rendered, tmp_path):
    """Screenshot without console errors; the page's own load script reports that every image
    decoded (naturalWidth > 0) in <html data-images=...>, read back with --dump-dom. A copy of the
    page without its plots/ folder must report the images as missing, so the check is not vacuous."""
    out, _ = rendered
    shot = tmp_path / "shot.png"
    result = _chromium(out / "report.html", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        assert len(set(image.convert("L").resize((60, 100)).getdata())) > 10, "the page is not blank"

    dom = _chromium(out / "report.html", tmp_path / "profile", "--dump-dom").stdout
    assert 'data-images="loaded"' in dom and 'data-images-missing="0"' in dom
    assert dom.count("<img ") == 5

    lonely = tmp_path / "lonely" / "report.html"
    lonely.parent.mkdir()
    shutil.copy(out / "report.html", lonely)
    dom = _chromium(lonely, tmp_path / "profile", "--dump-dom").stdout
    assert 'data-images="missing"' in dom and 'data-images-missing="5"' in dom
