"""The compression report of one run: out_dir/report.md, out_dir/report.html and out_dir/plots/*.png.

`render_report(run, out_dir)` takes one JSON-able dict describing a finished run::

    {
      "title": str, "task": "SST-2", "metric": "accuracy",     # metric: key of the headline dev score
      "teacher": {"path": str, "dev": {"accuracy": 0.91, ...},
                  "report": <tensorslim.report.summary.describe(teacher_dir)>},
      "students": [                                             # may be empty
        {"name": "tucker l=36 d=128", "path": str,
         "decomposition": <decomposition.json of the student, see compress.api.decompose>,
         "dev": {...}, "report": <describe(student_dir)>,
         "log_history": {"general": [...], "task_stage1": [...], "task_stage2": [...]}},   # optional
      ],
      "stages": [{"name": "finetune", "seconds": 12.3, "path": str}, ...],                  # path optional
      "settings": {...},                                        # optional, free-form (flattened into a table)
    }

`log_history` lists are transformers' `TrainerState.log_history` (dicts with "step", "loss" and/or
"eval_loss", ...); any stage may be missing or empty. Of a describe() dict the report uses
parameters.{embeddings, encoder, pooler, head, total} (encoder_factors / encoder_dense when present),
flops_per_token and throughput.{sequences_per_second, batch_size, seq_len}; of a decomposition
record method, rank, layer_rank, ops, slots, relative_error, relative_error_per_layer_slot, spectra,
decomposed_weights and seconds. A missing or mistyped key raises TensorslimError naming it.

Both documents are built from one list of sections, so the markdown and the HTML always show the
same numbers. The HTML has inline CSS and one inline script (no network access); the script marks
<html data-images="loaded|missing"> once the page has loaded and shows a notice when plots/ is
missing next to report.html.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .. import __version__
from ..errors import TensorslimError
from ..io import atomic_dir, atomic_file
from . import plots

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
NUMBER = "number"  # schema marker: int or float, not bool
PATH = "path"  # schema marker: str or os.PathLike

_DESCRIBE = {"parameters": {k: int for k in ("embeddings", "encoder", "pooler", "head", "total")},
             "flops_per_token": NUMBER, "throughput": {"sequences_per_second": NUMBER}}
_DECOMPOSITION = {"method": str, "rank": int, "slots": list, "relative_error": NUMBER,
                  "relative_error_per_layer_slot": list, "spectra": dict}
#: The keys `render_report` needs, with their types; a one-item list means "a list of these".
RUN_SCHEMA = {
    "title": str, "task": str, "metric": str,
    "teacher": {"path": PATH, "dev": dict, "report": _DESCRIBE},
    "students": [{"name": str, "path": PATH, "decomposition": _DECOMPOSITION, "dev": dict, "report": _DESCRIBE}],
    "stages": [{"name": str, "seconds": NUMBER}],
}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a mapping", NUMBER: "a number",
               PATH: "a path (str)"}


# ----------------------------------------------------------------------------- validation

def _is(value, kind) -> bool:
    if kind is NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, Mapping)
    if kind is PATH:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, kind)


def _check(value, schema, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, Mapping):
            raise TensorslimError(f"{where} must be a mapping, got {type(value).__name__}: {value!r:.80}",
                                  "build the run dict as documented in tensorslim.report.render")
        for key, sub in schema.items():
            if key not in value:
                raise TensorslimError(f"the run dict is missing key {key!r} at {where}[{key!r}]",
                                      f"add {key!r} to {where} (see the contract in tensorslim.report.render)")
            _check(value[key], sub, f"{where}[{key!r}]")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise TensorslimError(f"{where} must be a list, got {type(value).__name__}", f"make {where} a list")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}[{i}]")
    elif not _is(value, schema):
        raise TensorslimError(f"{where} must be {_TYPE_NAMES[schema]}, got {value!r:.80}",
                              f"fix {where} in the run dict")


def validate_run(run: Mapping) -> None:
    """Raise TensorslimError naming the first missing or mistyped key of `run` (see the module doc)."""
    _check(run, RUN_SCHEMA, "run")
    metric = run["metric"]
    models = [("run['teacher']", run["teacher"])]
    models += [(f"run['students'][{i}]", s) for i, s in enumerate(run["students"])]
    for where, model in models:
        score = model["dev"].get(metric, KeyError)
        if score is KeyError:
            raise TensorslimError(
                f"the run dict is missing key {metric!r} (run['metric']) at {where}['dev'][{metric!r}]; "
                f"it has {sorted(model['dev']) or 'no scores'}",
                f"add the dev {metric} to {where}['dev'], or set run['metric'] to a key every dev dict has")
        if score is not None and not _is(score, NUMBER):
            raise TensorslimError(f"{where}['dev'][{metric!r}] must be a number or None, got {score!r:.80}",
                                  "store the dev score as a float")
    names = [s["name"] for s in run["students"]]
    if len(set(names)) != len(names) or "teacher" in names:
        raise TensorslimError(f"student names repeat or use the reserved name 'teacher': {names}",
                              "give every student a distinct name other than 'teacher'")
    for i, student in enumerate(run["students"]):
        where, dec = f"run['students'][{i}]['decomposition']", student["decomposition"]
        rows, cols = dec["relative_error_per_layer_slot"], len(dec["slots"])
        if not rows or any(not isinstance(r, list) or len(r) != cols for r in rows):
            raise TensorslimError(f"{where}['relative_error_per_layer_slot'] must be a layers x {cols} list "
                                  f"(one column per slot in {where}['slots'])",
                                  "pass the decomposition.json written by `tensorslim decompose` unchanged")
        history = student.get("log_history") or {}
        if not isinstance(history, Mapping) or not all(isinstance(v, list) for v in history.values() if v):
            raise TensorslimError(f"run['students'][{i}]['log_history'] must map stage names to lists, got "
                                  f"{history!r:.80}", "pass the Trainer state.log_history lists per stage")
    if not isinstance(run.get("settings") or {}, Mapping):
        raise TensorslimError(f"run['settings'] must be a mapping, got {run['settings']!r:.80}",
                              "pass settings as a dict (or leave it out)")


# ----------------------------------------------------------------------------- number formats

def _finite(value) -> bool:
    return _is(value, NUMBER) and math.isfinite(value)


def fmt_int(value) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(value):,}" if _finite(value) else "n/a"


def fmt_ratio(value) -> str:
    """14.83 -> '14.8x', 1.974 -> '1.97x'."""
    if not _finite(value):
        return "n/a"
    return f"{value:,.1f}x" if value >= 10 else f"{value:.2f}x"


def fmt_percent(value) -> str:
    """0.9123 -> '91.2%'."""
    return f"{100 * value:.1f}%" if _finite(value) else "n/a"


def fmt_value(value) -> str:
    """Scores and free-form numbers: ints with separators, floats with 4 significant digits."""
    if isinstance(value, bool) or not _is(value, NUMBER):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a"
    if isinstance(value, int):
        return fmt_int(value)
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_si(value) -> str:
    """22413312 -> '22.4 M' (FLOPs)."""
    if not _finite(value):
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def fmt_seconds(seconds) -> str:
    """12.34 -> '12.3 s', 125 -> '2 min 05 s', 7380 -> '2 h 03 min'."""
    if not _finite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _ratio(num, den) -> float | None:
    return num / den if _finite(num) and _finite(den) and den != 0 else None


# ----------------------------------------------------------------------------- document model

@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


Inline = str | Code | Strong | list  # a list is a sequence of inlines


@dataclass
class Text:
    content: Inline


@dataclass
class Table:
    header: list[str]
    rows: list[list[Inline]]
    numeric: list[bool]  # right-aligned columns


@dataclass
class Image:
    src: str  # relative to out_dir, forward slashes
    alt: str
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword _ is never emphasis


def _md(x: Inline, in_table: bool = False) -> str:
    if isinstance(x, Code):
        return "`" + x.text.replace("`", "'").replace("|", "\\|" if in_table else "|") + "`"
    if isinstance(x, Strong):
        return f"**{_md(x.text, in_table)}**"
    if isinstance(x, list):
        return "".join(_md(part, in_table) for part in x)
    text = _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", str(x))).replace("\n", " ")
    return text.replace("|", "\\|") if in_table else text


def _html(x: Inline) -> str:
    if isinstance(x, Code):
        return f"<code>{html.escape(x.text)}</code>"
    if isinstance(x, Strong):
        return f"<strong>{_html(x.text)}</strong>"
    if isinstance(x, list):
        return "".join(_html(part) for part in x)
    return html.escape(str(x))


def to_markdown(title: str, intro: list, sections: list[Section]) -> str:
    out = [f"# {_md(title)}", ""]
    for block in intro:
        out += [_md_block(block), ""]
    out += ["Contents: " + " · ".join(f"[{_md(s.title)}](#{s.anchor})" for s in sections), ""]
    for section in sections:
        out += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            out += [_md_block(block), ""]
    out.append(f"<sub>generated by tensorslim {_md(__version__)}</sub>")
    return "\n".join(out) + "\n"


def _md_block(block) -> str:
    if isinstance(block, Text):
        return _md(block.content)
    if isinstance(block, Image):
        return f"![{_md(block.alt)}]({quote(block.src)})\n\n*{_md(block.caption)}*"
    lines = ["| " + " | ".join(_md(h, True) for h in block.header) + " |",
             "|" + "|".join("---:" if num else "---" for num in block.numeric) + "|"]
    lines += ["| " + " | ".join(_md(c, True) for c in row) + " |" for row in block.rows]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; line-height: 1.45; }
h1 { font-size: 1.7em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
nav { font-size: .95em; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .65em; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num, td:first-child { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .9em; color: #57606a; margin-top: .3em; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; font-size: .9em; overflow-wrap: anywhere; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; padding: .6em 1em; }
footer { margin-top: 3em; font-size: .85em; color: #57606a; }
"""

# Marks <html data-images="loaded|missing" data-images-missing="N"> after load and shows the notice
# when plots did not load. No "<" or "&" in it, so the page also parses as XML.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var missing = images.filter(function (img) { return !(img.complete ? img.naturalWidth > 0 : false); });
  document.documentElement.setAttribute("data-images", missing.length ? "missing" : "loaded");
  document.documentElement.setAttribute("data-images-missing", String(missing.length));
  if (missing.length) { document.getElementById("missing-plots").hidden = false; }
});
"""


def to_html(title: str, intro: list, sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
           '<meta name="viewport" content="width=device-width, initial-scale=1" />',
           f'<meta name="generator" content="tensorslim {html.escape(__version__)}" />',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", f"<script>{SCRIPT}</script>",
           "</head>", "<body>", f"<h1>{html.escape(title)}</h1>",
           '<p class="notice" id="missing-plots" hidden="hidden">Some plots did not load: keep the '
           f"<code>{PLOTS_DIR}/</code> folder next to this file.</p>"]
    out += [_html_block(block) for block in intro]
    out.append("<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections) + "</nav>")
    for section in sections:
        out.append(f'<section id="{section.anchor}">')
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        out += [_html_block(block) for block in section.blocks]
        out.append("</section>")
    out += [f"<footer>generated by tensorslim {html.escape(__version__)}</footer>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def _html_block(block) -> str:
    if isinstance(block, Text):
        return f"<p>{_html(block.content)}</p>"
    if isinstance(block, Image):
        return (f'<figure><img src="{html.escape(quote(block.src))}" alt="{html.escape(block.alt)}" />'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    cls = lambda num: ' class="num"' if num else ""  # noqa: E731
    head = "".join(f"<th{cls(n)}>{_html(h)}</th>" for h, n in zip(block.header, block.numeric))
    body = "".join("<tr>" + "".join(f"<td{cls(n)}>{_html(c)}</td>" for c, n in zip(row, block.numeric)) + "</tr>"
                   for row in block.rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# ----------------------------------------------------------------------------- report content

def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "student"


def _plot_names(run: Mapping) -> dict:
    """Relative file names of every plot the run gets."""
    students = run["students"]
    names = {"errors": [f"{PLOTS_DIR}/reconstruction_error_{i + 1}_{_slug(s['name'])}.png"
                        for i, s in enumerate(students)]}
    names["score"] = f"{PLOTS_DIR}/score_vs_size.png" if students else None
    names["loss"] = f"{PLOTS_DIR}/loss.png" if plots.has_losses(_histories(run)) else None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(students):  # students decomposed from the same stack share one spectrum plot
        groups.setdefault(json.dumps(s["decomposition"]["spectra"], sort_keys=True), []).append(i)
    names["spectra"] = [(f"{PLOTS_DIR}/spectra_{k + 1}.png", members) for k, members in enumerate(groups.values())]
    return names


def _histories(run: Mapping) -> dict[str, Mapping]:
    return {s["name"]: s.get("log_history") or {} for s in run["students"]}


def _write_plots(run: Mapping, names: dict, plots_dir: Path) -> None:
    """Draw every plot named in `names` into `plots_dir` (file names without the plots/ prefix)."""
    students = run["students"]
    at = lambda rel: plots_dir / Path(rel).name  # noqa: E731
    for student, rel in zip(students, names["errors"]):
        plots.error_heatmap(student["decomposition"], at(rel),
                            f"{student['name']}: relative reconstruction error per layer and slot")
    for rel, members in names["spectra"]:
        decs = [(students[i]["name"], students[i]["decomposition"]) for i in members]
        cuts = [(name, dec.get("layer_rank"), dec["rank"]) for name, dec in decs]
        plots.spectra_plot(decs[0][1]["spectra"], cuts, at(rel), "singular value spectra of the teacher's "
                           f"weight stack (ops = {decs[0][1].get('ops', 'all')})")
    if names["score"]:
        points = [{"name": "teacher", "encoder_parameters": run["teacher"]["report"]["parameters"]["encoder"],
                   "score": run["teacher"]["dev"][run["metric"]], "teacher": True}]
        points += [{"name": s["name"], "encoder_parameters": s["report"]["parameters"]["encoder"],
                    "score": s["dev"][run["metric"]]} for s in students]
        plots.score_vs_size(points, at(names["score"]), run["metric"], run["task"])
    if names["loss"]:
        plots.loss_curves(_histories(run), at(names["loss"]))


def build_document(run: Mapping, names: dict) -> tuple[list, list[Section]]:
    """(intro blocks, sections) of the report for a validated `run` and its plot file names."""
    teacher, students, metric = run["teacher"], run["students"], run["metric"]
    tp, t_score = teacher["report"]["parameters"], teacher["dev"][metric]
    models = [("teacher", teacher)] + [(s["name"], s) for s in students]

    def vs_teacher(s):
        p, r = s["report"]["parameters"], s["report"]
        return {"encoder": _ratio(tp["encoder"], p["encoder"]), "total": _ratio(tp["total"], p["total"]),
                "flops": _ratio(teacher["report"]["flops_per_token"], r["flops_per_token"]),
                "speed": _ratio(r["throughput"]["sequences_per_second"],
                                teacher["report"]["throughput"]["sequences_per_second"]),
                "score": _ratio(s["dev"][metric], t_score)}

    ratios = {s["name"]: vs_teacher(s) for s in students}
    intro = [Text([f"Task {run['task']}, headline metric: dev {metric}. Teacher: ", Code(str(teacher["path"])),
                   f"; {len(students)} student{'s' if len(students) != 1 else ''}."])]
    scored = [s for s in students if _finite(s["dev"][metric]) and ratios[s["name"]]["score"] is not None]
    if scored:
        best = max(scored, key=lambda s: s["dev"][metric])
        r = ratios[best["name"]]
        intro.append(Text(["Best student: ", Strong(best["name"]), f" keeps {fmt_percent(r['score'])} of the "
                           f"teacher's dev {metric} ({fmt_value(best['dev'][metric])} vs {fmt_value(t_score)}) "
                           f"with {fmt_ratio(r['encoder'])} fewer encoder parameters and "
                           f"{fmt_ratio(r['flops'])} fewer FLOPs per token."]))

    summary = Section("Summary", [Table(
        ["model", "encoder parameters", "encoder compression", "FLOPs reduction", "speed-up", f"dev {metric}",
         "% of teacher"],
        [["teacher", fmt_int(tp["encoder"]), "—", "—", "—", fmt_value(t_score),
          "100.0%" if _finite(t_score) else "n/a"]]
        + [[s["name"], fmt_int(s["report"]["parameters"]["encoder"]), fmt_ratio(ratios[s["name"]]["encoder"]),
            fmt_ratio(ratios[s["name"]]["flops"]), fmt_ratio(ratios[s["name"]]["speed"]),
            fmt_value(s["dev"][metric]), fmt_percent(ratios[s["name"]]["score"])] for s in students],
        [False] + [True] * 6)])

    def part(p, key):
        return fmt_int(p[key]) if key in p else "n/a"

    params = Section("Parameters", [Table(
        ["model", "embeddings", "encoder: factors", "encoder: dense", "encoder", "pooler + head", "total",
         "encoder compression", "total compression"],
        [[name, part(p, "embeddings"), part(p, "encoder_factors"), part(p, "encoder_dense"), fmt_int(p["encoder"]),
          fmt_int(p["pooler"] + p["head"]), fmt_int(p["total"]),
          "—" if name == "teacher" else fmt_ratio(ratios[name]["encoder"]),
          "—" if name == "teacher" else fmt_ratio(ratios[name]["total"])]
         for name, m in models for p in [m["report"]["parameters"]]],
        [False] + [True] * 8),
        Text("encoder = factors (U, P, C, V for tucker; U, S, V for lowrank and shared) + dense weights kept "
             "from the teacher (biases, LayerNorms and matrices outside ops). Embeddings, pooler and task head "
             "are copied from the teacher. Compression = teacher parameters / student parameters.")])

    measured = {(m["report"]["throughput"].get("batch_size"), m["report"]["throughput"].get("seq_len"))
                for _, m in models}
    (batch, seq), *rest = measured
    how = (f"models measured with different (batch, sequence length) {sorted(measured, key=str)}, so speed-ups "
           "are not comparable" if rest else f"batch {batch}, sequence length {seq}" if batch else "")
    speed_note = (f"Throughput: sequences per second of the bare encoder on random tokens, float32{', ' if how else ''}"
                  f"{how} (median batch time). FLOPs per token: forward projections and attention of the encoder.")
    speed = Section("Speed", [Table(
        ["model", "FLOPs / token", "FLOPs reduction", "sequences / s", "speed-up"],
        [[name, fmt_si(m["report"]["flops_per_token"]),
          "—" if name == "teacher" else fmt_ratio(ratios[name]["flops"]),
          f"{m['report']['throughput']['sequences_per_second']:,.1f}",
          "—" if name == "teacher" else fmt_ratio(ratios[name]["speed"])] for name, m in models],
        [False, True, True, True, True]), Text(speed_note)])

    others = list(dict.fromkeys(k for _, m in models for k, v in m["dev"].items() if k != metric and _finite(v)))
    scores = Section("Dev scores", [Table(
        ["model", Strong(metric), "% of teacher", *others],
        [[name, Strong(fmt_value(m["dev"][metric])),
          "100.0%" if name == "teacher" and _finite(t_score) else
          "n/a" if name == "teacher" else fmt_percent(ratios[name]["score"]),
          *(fmt_value(m["dev"].get(k)) for k in others)] for name, m in models],
        [False] + [True] * (2 + len(others))),
        Text(f"% of teacher = student {metric} / teacher {metric}.")])
    if names["score"]:
        scores.blocks.append(Image(names["score"], f"dev {metric} against encoder parameters",
                                   f"Dev {metric} against encoder parameters (log scale); the star is the teacher."))

    sections = [summary, params, speed, scores]
    if students:
        sections.append(_decomposition_section(run, names))
    if names["loss"]:
        sections.append(Section("Training", [Image(
            names["loss"], "training loss per stage",
            "Training loss (solid) and evaluation loss (dashed) against optimizer step, one panel per stage.")]))
    sections.append(_stages_section(run["stages"]))
    sections.append(Section("Models", [Table(
        ["model", "directory", "model type"],
        [[name, Code(str(m["path"])), m["report"].get("model_type", "n/a")] for name, m in models],
        [False, False, False])]))
    settings = _flatten(run.get("settings") or {})
    if settings:
        sections.append(Section("Settings", [Table(["setting", "value"], [[k, Code(v)] for k, v in settings],
                                                   [False, False])]))
    return intro, sections


def _decomposition_section(run: Mapping, names: dict) -> Section:
    rows = []
    for s in run["students"]:
        dec = s["decomposition"]
        weights = dec.get("decomposed_weights") or {}
        rows.append([s["name"], dec["method"], dec.get("ops", "all"), fmt_int(dec["rank"]),
                     fmt_int(dec["layer_rank"]) if dec.get("layer_rank") is not None else "—",
                     f"{fmt_int(weights['teacher'])} → {fmt_int(weights['student'])}" if weights else "n/a",
                     fmt_ratio(weights.get("ratio")), f"{dec['relative_error']:.4f}",
                     fmt_seconds((dec.get("seconds") or {}).get("fit"))])
    section = Section("Decomposition", [Table(
        ["model", "method", "ops", "d (rank)", "l (layer rank)", "decomposed weights", "reduction",
         "relative error", "fit time"], rows, [False, False, False, True, True, True, True, True, True]),
        Text("Relative error = ||W - W_hat|| / ||W|| of the stacked weight matrices at initialisation, before "
             "distillation.")])
    for s, rel in zip(run["students"], names["errors"]):
        section.blocks.append(Image(rel, f"reconstruction error of {s['name']}",
                                    f"{s['name']}: relative reconstruction error of each weight slice "
                                    "(rows: layers, columns: slots)."))
    for rel, members in names["spectra"]:
        who = ", ".join(run["students"][i]["name"] for i in members)
        section.blocks.append(Image(rel, f"singular value spectra ({who})",
                                    f"Singular values of the slice, row and column unfoldings of the teacher's "
                                    f"weight stack, normalised by the largest; dashed lines: the ranks kept by {who}."))
    return section


def _stages_section(stages: Sequence[Mapping]) -> Section:
    total = sum(s["seconds"] for s in stages if _finite(s["seconds"]))
    rows = [[s["name"], fmt_seconds(s["seconds"]), fmt_percent(_ratio(s["seconds"], total)),
             Code(str(s["path"])) if s.get("path") else ""] for s in stages]
    rows.append([Strong("total"), Strong(fmt_seconds(total)), "100.0%" if total else "n/a", ""])
    return Section("Time per stage", [Table(["stage", "time", "share", "output"], rows, [False, True, True, False])])


def _flatten(settings: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items += _flatten(value, f"{name}.")
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return items


# ----------------------------------------------------------------------------- entry point

def render_report(run: Mapping, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/report.html and out_dir/plots/*.png for `run` (see module doc).

    Returns {path relative to out_dir: absolute-or-given path} of every file written. plots/ is
    replaced in one rename (refused if it exists and was not written by tensorslim, unless
    `overwrite`); each report file is written atomically.
    """
    validate_run(run)
    out_dir = Path(out_dir)
    names = _plot_names(run)
    plot_files = (names["errors"] + [rel for rel, _ in names["spectra"]]
                  + [rel for rel in (names["score"], names["loss"]) if rel])
    if plot_files:
        with atomic_dir(out_dir / PLOTS_DIR, "report plots", overwrite=overwrite) as tmp:
            _write_plots(run, names, tmp)
    intro, sections = build_document(run, names)
    written = {rel: out_dir / rel for rel in plot_files}
    for rel, text in (("report.md", to_markdown(run["title"], intro, sections)),
                      ("report.html", to_html(run["title"], intro, sections))):
        with atomic_file(out_dir / rel, encoding="utf-8") as handle:
            handle.write(text)
        written[rel] = out_dir / rel
    log.info("wrote %s (%d plots)", out_dir / "report.html", len(plot_files))
    return written
