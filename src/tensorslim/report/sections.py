"""What the report says: the intro and the sections, built from a parsed Run (docs/report.md lists them)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from ..train.evaluate import margin_kept
from .document import Code, Image, Section, Strong, Table, Text
from .formats import fmt_int, fmt_percent, fmt_ratio, fmt_seconds, fmt_si, fmt_value, ratio
from .run import Run, Stage, Student, finite
from .serving_table import serving_section
from .timing import speed_note

NOT_MEASURED = "not measured"


def _vs_teacher(run: Run, student: Student) -> dict:
    """Ratios of `student` against the teacher: compression, FLOPs, speed-up, score share, margin kept."""
    t, r, metric = run.teacher.report, student.report, run.metric
    t_score, score = run.teacher.dev[metric], student.dev[metric]
    base = run.baseline.dev.get(metric) if run.baseline else None
    speedup = run.speed.speedups[student.name].median if run.speed and student.name in run.speed.speedups else None
    return {
        "encoder": ratio(t.parameters.encoder, r.parameters.encoder),
        "total": ratio(t.parameters.total, r.parameters.total),
        "flops": ratio(t.flops_per_token, r.flops_per_token),
        "speed": speedup if run.speed and run.speed.trusted else None,
        "score": ratio(score, t_score),
        "margin": margin_kept(score, t_score, base),
    }


def _speed_cell(run: Run, value) -> str:
    return fmt_ratio(value) if run.speed is not None and run.speed.trusted else NOT_MEASURED


def build_document(run: Run, names: dict) -> tuple[list, list[Section]]:
    """(intro blocks, sections) of the report for a parsed `run` and its plot file names."""
    teacher, students, metric = run.teacher, run.students, run.metric
    t_score = teacher.dev[metric]
    ratios = {s.name: _vs_teacher(run, s) for s in students}
    intro = [
        Text(
            [
                f"Task {run.task}, headline metric: dev {metric}. Teacher: ",
                Code(teacher.path),
                f"; {len(students)} student{'s' if len(students) != 1 else ''}.",
            ]
        )
    ]
    scored = [s for s in students if finite(s.dev[metric]) and ratios[s.name]["score"] is not None]
    if scored:
        best = max(scored, key=lambda s: s.dev[metric])
        r = ratios[best.name]
        margin = (
            f" and {fmt_percent(r['margin'])} of its margin over the constant baseline "
            f"({fmt_value(run.baseline.dev.get(metric))})"
            if r["margin"] is not None
            else ""
        )
        intro.append(
            Text(
                [
                    "Best student: ",
                    Strong(best.name),
                    f" keeps {fmt_percent(r['score'])} of the "
                    f"teacher's dev {metric} ({fmt_value(best.dev[metric])} vs {fmt_value(t_score)}){margin}, "
                    f"with {fmt_ratio(r['encoder'])} fewer encoder parameters and "
                    f"{fmt_ratio(r['flops'])} fewer FLOPs per token.",
                ]
            )
        )
    sections = [_summary(run, ratios), _parameters(run, ratios), _speed(run, ratios)]
    if run.serving is not None:
        sections.append(serving_section(run.serving))
    sections.append(_scores(run, ratios, names))
    if students:
        sections.append(_decomposition(run, names))
    if names["loss"]:
        sections.append(
            Section(
                "Training",
                [
                    Image(
                        names["loss"],
                        "training loss per stage",
                        "Training loss (solid) and evaluation loss (dashed) against optimizer step, "
                        "one panel per stage.",
                    )
                ],
            )
        )
    sections.append(stages_section(run.stages))
    sections.append(
        Section(
            "Models",
            [
                Table(
                    ["model", "directory", "model type"],
                    [[name, Code(m.path), m.report.model_type] for name, m in run.models],
                    [False, False, False],
                )
            ],
        )
    )
    settings = flatten_settings(run.settings or {})
    if settings:
        sections.append(
            Section("Settings", [Table(["setting", "value"], [[k, Code(v)] for k, v in settings], [False, False])])
        )
    return intro, sections


def _summary(run: Run, ratios: dict) -> Section:
    metric, t_score = run.metric, run.teacher.dev[run.metric]
    rows = [
        [
            "teacher",
            fmt_int(run.teacher.report.parameters.encoder),
            "—",
            "—",
            "—",
            fmt_value(t_score),
            "100.0%" if finite(t_score) else "n/a",
            "100.0%" if _margin_defined(run) else "n/a",
        ]
    ]
    rows += [
        [
            s.name,
            fmt_int(s.report.parameters.encoder),
            fmt_ratio(ratios[s.name]["encoder"]),
            fmt_ratio(ratios[s.name]["flops"]),
            _speed_cell(run, ratios[s.name]["speed"]),
            fmt_value(s.dev[metric]),
            fmt_percent(ratios[s.name]["score"]),
            fmt_percent(ratios[s.name]["margin"]),
        ]
        for s in run.students
    ]
    return Section(
        "Summary",
        [
            Table(
                [
                    "model",
                    "encoder parameters",
                    "encoder compression",
                    "FLOPs reduction",
                    "speed-up",
                    f"dev {metric}",
                    "% of teacher",
                    "margin kept",
                ],
                rows,
                [False] + [True] * 7,
            )
        ],
    )


def _margin_defined(run: Run) -> bool:
    t_score = run.teacher.dev[run.metric]
    return margin_kept(t_score, t_score, run.baseline.dev.get(run.metric) if run.baseline else None) is not None


def _parameters(run: Run, ratios: dict) -> Section:
    def cell(value):
        return "n/a" if value is None else fmt_int(value)

    rows = [
        [
            name,
            cell(p.embeddings),
            cell(p.encoder_factors),
            cell(p.encoder_dense),
            fmt_int(p.encoder),
            fmt_int(p.pooler + p.head),
            fmt_int(p.total),
            "—" if name == "teacher" else fmt_ratio(ratios[name]["encoder"]),
            "—" if name == "teacher" else fmt_ratio(ratios[name]["total"]),
        ]
        for name, m in run.models
        for p in [m.report.parameters]
    ]
    return Section(
        "Parameters",
        [
            Table(
                [
                    "model",
                    "embeddings",
                    "encoder: factors",
                    "encoder: dense",
                    "encoder",
                    "pooler + head",
                    "total",
                    "encoder compression",
                    "total compression",
                ],
                rows,
                [False] + [True] * 8,
            ),
            Text(
                "encoder = factors (U, P, C, V for tucker; U, S, V for lowrank and shared) + dense weights kept "
                "from the teacher (biases, LayerNorms and matrices outside ops). Embeddings, pooler and task head "
                "are copied from the teacher. Compression = teacher parameters / student parameters."
            ),
        ],
    )


def _speed(run: Run, ratios: dict) -> Section:
    speed = run.speed
    rows = []
    for name, m in run.models:
        measured = speed is not None and name in speed.sequences_per_second
        rows.append(
            [
                name,
                fmt_si(m.report.flops_per_token),
                "—" if name == "teacher" else fmt_ratio(ratios[name]["flops"]),
                f"{speed.sequences_per_second[name]:,.1f}" if measured else "n/a",
                fmt_percent(speed.seconds[name].spread) if measured else "n/a",
                "—" if name == "teacher" else _speed_cell(run, ratios[name]["speed"]),
            ]
        )
    note = speed_note(asdict(speed)) if speed is not None else "Speed was not measured for this run."
    return Section(
        "Speed",
        [
            Table(
                ["model", "FLOPs / token", "FLOPs reduction", "sequences / s", "spread", "speed-up"],
                rows,
                [False, True, True, True, True, True],
            ),
            Text(
                f"{note} Sequences per second of the bare encoder on random tokens; spread = interquartile range of "
                "the round times / their median; speed-up = median of the per-round ratios against the teacher. "
                "FLOPs per token: forward projections and attention of the encoder."
            ),
        ],
    )


def _scores(run: Run, ratios: dict, names: dict) -> Section:
    metric, t_score = run.metric, run.teacher.dev[run.metric]
    models = run.models
    others = list(dict.fromkeys(k for _, m in models for k, v in m.dev.items() if k != metric and finite(v)))
    rows = [
        [
            name,
            Strong(fmt_value(m.dev[metric])),
            ("100.0%" if finite(t_score) else "n/a") if name == "teacher" else fmt_percent(ratios[name]["score"]),
            ("100.0%" if _margin_defined(run) else "n/a") if name == "teacher" else fmt_percent(ratios[name]["margin"]),
            *(fmt_value(m.dev.get(k)) for k in others),
        ]
        for name, m in models
    ]
    base_note = "No constant baseline was given for this run, so the margin kept is n/a."
    if run.baseline is not None:
        base = run.baseline
        rows.append(
            [
                "constant baseline",
                fmt_value(base.dev.get(metric)),
                "",
                "",
                *(fmt_value(base.dev.get(k)) for k in others),
            ]
        )
        base_note = (
            f"Constant baseline: {base.predictor}, scored on the same dev examples with the same metric. "
            f"Margin kept = (student - baseline) / (teacher - baseline): the share of what the teacher "
            f"learned beyond the baseline that the student keeps (n/a when the teacher is not above it)."
        )
    scores = Section(
        "Dev scores",
        [
            Table(
                ["model", Strong(metric), "% of teacher", "margin kept", *others],
                rows,
                [False] + [True] * (3 + len(others)),
            ),
            Text(f"% of teacher = student {metric} / teacher {metric}. {base_note}"),
        ],
    )
    if names["score"]:
        scores.blocks.append(
            Image(
                names["score"],
                f"dev {metric} against encoder parameters",
                f"Dev {metric} against encoder parameters (log scale); the star is the teacher.",
            )
        )
    return scores


def _decomposition(run: Run, names: dict) -> Section:
    rows = []
    for s in run.students:
        dec = s.decomposition
        weights = dec.decomposed_weights or {}
        rows.append(
            [
                s.name,
                dec.method,
                dec.ops,
                fmt_int(dec.rank),
                fmt_int(dec.layer_rank) if dec.layer_rank is not None else "—",
                f"{fmt_int(weights['teacher'])} → {fmt_int(weights['student'])}"
                if "teacher" in weights and "student" in weights
                else "n/a",
                fmt_ratio(weights.get("ratio")),
                f"{dec.relative_error:.4f}",
                fmt_seconds((dec.seconds or {}).get("fit")),
            ]
        )
    section = Section(
        "Decomposition",
        [
            Table(
                [
                    "model",
                    "method",
                    "ops",
                    "d (rank)",
                    "l (layer rank)",
                    "decomposed weights",
                    "reduction",
                    "relative error",
                    "fit time",
                ],
                rows,
                [False, False, False, True, True, True, True, True, True],
            ),
            Text(
                "Relative error = ||W - W_hat|| / ||W|| of the stacked weight matrices at initialisation, before "
                "distillation."
            ),
        ],
    )
    for s, rel in zip(run.students, names["errors"], strict=True):
        section.blocks.append(
            Image(
                rel,
                f"reconstruction error of {s.name}",
                f"{s.name}: relative reconstruction error of each weight slice (rows: layers, columns: slots).",
            )
        )
    for rel, members in names["spectra"]:
        who = ", ".join(run.students[i].name for i in members)
        section.blocks.append(
            Image(
                rel,
                f"singular value spectra ({who})",
                f"Singular values of the slice, row and column unfoldings of the teacher's "
                f"weight stack, normalised by the largest; dashed lines: the ranks kept by {who}.",
            )
        )
    return section


def stages_section(stages: Sequence[Stage]) -> Section:
    total = sum(s.seconds for s in stages if finite(s.seconds))
    rows = [
        [s.name, fmt_seconds(s.seconds), fmt_percent(ratio(s.seconds, total)), Code(s.path) if s.path else ""]
        for s in stages
    ]
    rows.append([Strong("total"), Strong(fmt_seconds(total)), "100.0%" if total else "n/a", ""])
    return Section("Time per stage", [Table(["stage", "time", "share", "output"], rows, [False, True, True, False])])


def flatten_settings(settings: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items += flatten_settings(value, f"{name}.")
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return items
