"""The report's figures as PNG files (matplotlib, Agg, no pyplot state).

Every function takes plain JSON data (a decomposition record, Trainer log histories, scores and
sizes), writes one PNG atomically to `path` and returns `path`. They never show a window and
never touch pyplot's global figure list, so they are safe in servers, threads and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_file

DPI = 100
#: Stage keys of a student's "log_history" in the order training runs them, with their titles.
STAGES = {
    "general": "general distillation",
    "task_stage1": "task distillation, stage 1 (layers)",
    "task_stage2": "task distillation, stage 2 (logits)",
}
SPECTRA = {"slices": "slices (layers x slots)", "rows": "rows (left factor U)", "columns": "columns (right factor V)"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, metadata={"Software": "tensorslim"})
    return path


def error_heatmap(decomposition: Mapping, path: str | Path, title: str = "") -> Path:
    """Relative reconstruction error ||W - W_hat|| / ||W|| of each weight slice, layers x slots.

    `decomposition["relative_error_per_layer_slot"]` is a (layers, slots) nested list and
    `decomposition["slots"]` names its columns.
    """
    errors = np.asarray(decomposition["relative_error_per_layer_slot"], dtype=float)
    slots = list(decomposition["slots"])
    layers, cols = errors.shape
    fig = _figure(max(5.0, 0.62 * cols + 2.2), max(2.6, 0.42 * layers + 1.6))
    ax = fig.subplots()
    image = ax.imshow(errors, cmap="viridis", vmin=0.0, vmax=max(1.0, float(np.nanmax(errors))), aspect="auto")
    ax.set_xticks(range(cols), slots, rotation=45, ha="right")
    ax.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
    ax.set_xlabel("slot")
    ax.set_ylabel("layer")
    if layers * cols <= 300:  # numbers stay legible up to BERT-large's 24 x 12
        for (i, j), value in np.ndenumerate(errors):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black" if value > 0.6 else "white"
            )
    fig.colorbar(image, ax=ax, label="relative error")
    ax.set_title(title or "relative reconstruction error per layer and slot", fontsize=10)
    return _save(fig, path)


def retained_energy(values: Sequence[float], rank: int) -> float:
    """Share of the squared singular values among the leading `rank` ones (1.0 when all are kept)."""
    sq = np.square(np.asarray(values, dtype=float))
    total = sq.sum()
    return float(sq[:rank].sum() / total) if total > 0 else 1.0


def spectra_plot(
    spectra: Mapping[str, Sequence[float]],
    cuts: Sequence[tuple[str, int | None, int | None]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Normalised singular values sigma_i / sigma_1 of the unfoldings of one weight stack, log scale.

    `spectra` is a decomposition record's "spectra": "slices", "rows", "columns" -> descending
    singular values. `cuts` holds (student name, layer_rank l or None, rank d) for the students
    decomposed from this stack: a dashed vertical line marks l on the slices panel and d on the
    rows and columns panels, and the legend gives the share of squared singular values kept.
    """
    modes = [m for m in SPECTRA if spectra.get(m)]
    fig = _figure(4.2 * max(1, len(modes)), 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(modes))))
    for ax, mode in zip(axes, modes):
        values = np.asarray(spectra[mode], dtype=float)
        top = values[0] if values[0] > 0 else 1.0
        ax.semilogy(
            np.arange(1, len(values) + 1),
            np.clip(values / top, 1e-12, None),
            color="C0",
            lw=1.6,
            label="singular values",
        )
        symbol = "l" if mode == "slices" else "d"
        by_cut: dict[int, list[str]] = {}
        for name, layer_rank, rank in cuts:
            cut = layer_rank if mode == "slices" else rank
            if cut:
                by_cut.setdefault(cut, []).append(name)
        for i, (cut, names) in enumerate(sorted(by_cut.items())):
            label = f"{symbol} = {cut}: {retained_energy(values, cut):.0%} of energy kept"
            ax.axvline(
                cut,
                color=f"C{(i + 1) % 10}",
                ls="--",
                lw=1.2,
                label=label if len(cuts) == 1 else f"{', '.join(names)}: {label}",
            )
        ax.set_title(SPECTRA[mode], fontsize=10)
        ax.set_xlabel("index")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel(r"$\sigma_i / \sigma_1$")
    fig.suptitle(title or "singular value spectra of the weight stack", fontsize=11)
    return _save(fig, path)


def loss_points(history: Sequence[Mapping], key: str = "loss") -> tuple[list[float], list[float]]:
    """(steps, values) of the entries of a Trainer log_history that hold a finite `key`."""
    steps, values = [], []
    for entry in history or ():
        value, step = entry.get(key), entry.get("step")
        if isinstance(value, (int, float)) and step is not None and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def has_losses(log_histories: Mapping[str, Mapping[str, Sequence[Mapping]]]) -> bool:
    """True when any student has a logged training or evaluation loss in any stage."""
    return any(
        loss_points(hist.get(stage, ()), key)[0]
        for hist in log_histories.values()
        for stage in STAGES
        for key in ("loss", "eval_loss")
    )


def loss_curves(log_histories: Mapping[str, Mapping[str, Sequence[Mapping]]], path: str | Path) -> Path:
    """Training loss (solid) and evaluation loss (dashed, dots) against step, one panel per stage.

    `log_histories` maps a student's name to its {"general" | "task_stage1" | "task_stage2": Trainer
    state.log_history}; stages nobody logged are left out, students share colours across panels.
    """
    stages = [
        s
        for s in STAGES
        if any(loss_points(h.get(s, ()), k)[0] for h in log_histories.values() for k in ("loss", "eval_loss"))
    ]
    fig = _figure(4.2 * max(1, len(stages)), 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(stages))))
    colours = {name: f"C{i % 10}" for i, name in enumerate(log_histories)}
    for ax, stage in zip(axes, stages):
        for name, hist in log_histories.items():
            steps, values = loss_points(hist.get(stage, ()))
            if steps:
                ax.plot(steps, values, color=colours[name], lw=1.4, label=name)
            steps, values = loss_points(hist.get(stage, ()), "eval_loss")
            if steps:
                ax.plot(steps, values, color=colours[name], ls="--", marker="o", ms=3, lw=1, label=f"{name} (eval)")
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if values and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")
        ax.set_title(STAGES[stage], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss")
    return _save(fig, path)


def score_vs_size(
    points: Sequence[Mapping], path: str | Path, metric: str, task: str = "", baseline: float | None = None
) -> Path:
    """Dev score against encoder parameters (log x): the paper's main figure.

    `points` are {"name", "encoder_parameters", "score", "teacher": bool}; points without a finite
    score are left out. The teacher is a star with a dotted line at its score; a finite `baseline`
    (the constant predictor's score) is a grey dashed line.
    """
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    students = [p for p in points if not p.get("teacher") and _finite(p["score"])]
    teachers = [p for p in points if p.get("teacher") and _finite(p["score"])]
    if students:
        students = sorted(students, key=lambda p: p["encoder_parameters"])
        xs, ys = [p["encoder_parameters"] for p in students], [p["score"] for p in students]
        ax.plot(xs, ys, color="tab:blue", marker="o", lw=1, label="students")
        for p in students:
            ax.annotate(
                p["name"], (p["encoder_parameters"], p["score"]), textcoords="offset points", xytext=(4, 5), fontsize=8
            )
    for p in teachers:
        ax.plot([p["encoder_parameters"]], [p["score"]], color="tab:red", marker="*", ms=13, ls="none", label=p["name"])
        ax.axhline(p["score"], color="tab:red", ls=":", lw=1)
    if _finite(baseline):
        ax.axhline(baseline, color="gray", ls="--", lw=1, label="constant baseline")
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters (log scale)")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{task} dev {metric} against encoder size".strip(), fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.margins(x=0.15, y=0.15)
    if students or teachers:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no dev scores", transform=ax.transAxes, ha="center", va="center", color="gray")
    return _save(fig, path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def perplexity_vs_compression(
    points: Sequence[Mapping], dense: float | None, path: str | Path, title: str = ""
) -> Path:
    """Perplexity (log y) against the share of matrix weights removed, one line per method.

    `points` are {"method", "removed" (fraction), "perplexity", "healed": bool}; the students before
    healing are joined by a line per method, healed ones are stars in the method's colour; the dense
    model's finite perplexity is a dotted line. Points without a finite perplexity are left out.
    """
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    methods = list(dict.fromkeys(p["method"] for p in points))
    for i, method in enumerate(methods):
        mine = sorted(
            (p for p in points if p["method"] == method and _finite(p["perplexity"])), key=lambda p: p["removed"]
        )
        plain = [p for p in mine if not p.get("healed")]
        if plain:
            ax.plot(
                [100 * p["removed"] for p in plain],
                [p["perplexity"] for p in plain],
                marker="o",
                color=f"C{i}",
                lw=1.2,
                label=method,
            )
        healed = [p for p in mine if p.get("healed")]
        if healed:
            ax.plot(
                [100 * p["removed"] for p in healed],
                [p["perplexity"] for p in healed],
                marker="*",
                ms=12,
                ls="none",
                color=f"C{i}",
                label=f"{method} healed",
            )
    if _finite(dense):
        ax.axhline(dense, color="black", ls=":", lw=1, label="dense")
    values = [v for line in ax.get_lines() for v in line.get_ydata() if v > 0]
    if values:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no finite perplexity", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_xlabel("matrix weights removed (%)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title or "perplexity against compression", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.margins(x=0.15)
    if values:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
