"""The compression report of one run: out_dir/report.md, out_dir/report.html and out_dir/plots/*.png.

`render_report(run, out_dir)` takes one JSON-able dict describing a finished run (its teacher,
students, interleaved speed measurement, constant baseline, dev scores, training logs and stage
times; the contract is tensorslim.report.run and docs/report.md), parses it into typed dataclasses
(a missing or mistyped key raises TensorslimError naming it, before anything is written), draws
the plots and writes both documents from one list of sections (report.sections, report.document).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import atomic_dir, atomic_file
from . import plots
from .document import PLOTS_DIR, to_html, to_markdown
from .run import Run, parse_run
from .sections import build_document

log = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "student"


def _histories(run: Run) -> dict[str, dict]:
    return {s.name: s.log_history or {} for s in run.students}


def plot_names(run: Run) -> dict:
    """Relative file names of every plot the run gets: errors (one per student), spectra (one per
    distinct teacher stack, with the students that share it), score and loss (None when not drawn)."""
    students = run.students
    names: dict[str, Any] = {
        "errors": [f"{PLOTS_DIR}/reconstruction_error_{i + 1}_{_slug(s.name)}.png" for i, s in enumerate(students)]
    }
    names["score"] = f"{PLOTS_DIR}/score_vs_size.png" if students else None
    names["loss"] = f"{PLOTS_DIR}/loss.png" if plots.has_losses(_histories(run)) else None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(students):  # students decomposed from the same stack share one spectrum plot
        groups.setdefault(json.dumps(s.decomposition.spectra, sort_keys=True), []).append(i)
    names["spectra"] = [(f"{PLOTS_DIR}/spectra_{k + 1}.png", members) for k, members in enumerate(groups.values())]
    return names


def _write_plots(run: Run, names: dict, plots_dir: Path) -> None:
    """Draw every plot named in `names` into `plots_dir` (file names without the plots/ prefix)."""
    students = run.students

    def at(rel: str) -> Path:
        return plots_dir / Path(rel).name

    for student, rel in zip(students, names["errors"], strict=True):
        plots.error_heatmap(
            asdict(student.decomposition), at(rel), f"{student.name}: relative reconstruction error per layer and slot"
        )
    for rel, members in names["spectra"]:
        decs = [students[i].decomposition for i in members]
        cuts = [(students[i].name, dec.layer_rank, dec.rank) for i, dec in zip(members, decs, strict=True)]
        plots.spectra_plot(
            decs[0].spectra,
            cuts,
            at(rel),
            f"singular value spectra of the teacher's weight stack (ops = {decs[0].ops})",
        )
    if names["score"]:
        points = [
            {
                "name": "teacher",
                "encoder_parameters": run.teacher.report.parameters.encoder,
                "score": run.teacher.dev[run.metric],
                "teacher": True,
            }
        ]
        points += [
            {"name": s.name, "encoder_parameters": s.report.parameters.encoder, "score": s.dev[run.metric]}
            for s in students
        ]
        baseline = run.baseline.dev.get(run.metric) if run.baseline else None
        plots.score_vs_size(points, at(names["score"]), run.metric, run.task, baseline=baseline)
    if names["loss"]:
        plots.loss_curves(_histories(run), at(names["loss"]))


def render_report(run: dict, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/report.html and out_dir/plots/*.png for `run` (see module doc).

    Returns {path relative to out_dir: out_dir / path} of every file written. plots/ is replaced in
    one rename (refused if it exists and was not written by tensorslim, unless `overwrite`); each
    report file is written atomically.
    """
    parsed = parse_run(run)
    out_dir = Path(out_dir)
    names = plot_names(parsed)
    plot_files = (
        names["errors"] + [rel for rel, _ in names["spectra"]] + [rel for rel in (names["score"], names["loss"]) if rel]
    )
    if plot_files:
        with atomic_dir(out_dir / PLOTS_DIR, "report plots", overwrite=overwrite) as tmp:
            _write_plots(parsed, names, tmp)
    intro, sections = build_document(parsed, names)
    written = {rel: out_dir / rel for rel in plot_files}
    for rel, text in (
        ("report.md", to_markdown(parsed.title, intro, sections)),
        ("report.html", to_html(parsed.title, intro, sections)),
    ):
        with atomic_file(out_dir / rel, encoding="utf-8") as handle:
            handle.write(text)
        written[rel] = out_dir / rel
    log.info("wrote %s (%d plots)", out_dir / "report.html", len(plot_files))
    return written
