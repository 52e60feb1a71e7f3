"""The decoder demo's report (`tensorslim demo --model llm`): report.md, report.html and plots/*.png.

`render_llm_report(run, out_dir)` takes the run `pipeline.demo_llm.run_llm_demo` builds: "title",
"teacher", "methods", "compressions" (fractions removed), "perplexity" ({model name: evaluate.perplexity
result}; names "dense", "<method> <N>%" and "<method> <N>% healed"), "decomposition" ({student name:
method, ranks, errors, weights, seconds}), "healing" ({"level", "steps", "eval_steps", "curves":
{student name: Trainer log_history}}), "speed" (report.decode.decode_speed), "prompts",
"continuations" ({model name: one text per prompt}), "settings" and "stages". The documents share
the encoder report's writers (report.document) and its stage and settings tables (report.sections).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import atomic_dir, atomic_file
from . import plots
from .document import PLOTS_DIR, Code, Image, Section, Strong, Table, Text, to_html, to_markdown
from .formats import fmt_int, fmt_percent, fmt_ratio, fmt_seconds, fmt_value
from .run import Stage, finite
from .sections import flatten_settings, stages_section

log = logging.getLogger(__name__)

PERPLEXITY_PLOT = f"{PLOTS_DIR}/perplexity_vs_compression.png"
HEALING_PLOT = f"{PLOTS_DIR}/healing.png"
NOT_MEASURED = "not measured"


def _name(method: str, level: float) -> str:
    return f"{method} {round(100 * level)}%"


def _points(run: dict) -> list[dict]:
    ppl = run["perplexity"]
    points = []
    for method in run["methods"]:
        for level in run["compressions"]:
            name = _name(method, level)
            points.append({"method": method, "removed": level, "perplexity": ppl[name]["perplexity"]})
            if f"{name} healed" in ppl:
                points.append(
                    {
                        "method": method,
                        "removed": level,
                        "perplexity": ppl[f"{name} healed"]["perplexity"],
                        "healed": True,
                    }
                )
    return points


def _last(history: list[dict], key: str) -> tuple[float | None, float | None]:
    """(first, last) logged value of `key`."""
    values = [e[key] for e in history if finite(e.get(key))]
    return (values[0], values[-1]) if values else (None, None)


def _perplexity_section(run: dict) -> Section:
    ppl, dense = run["perplexity"], run["perplexity"]["dense"]
    teacher = (next(iter(run["decomposition"].values()), {}).get("parameters") or {}).get("teacher", {})
    rows = [
        [
            "dense",
            "0%",
            "n/a",
            fmt_int(teacher.get("total")),
            fmt_value(dense["perplexity"]),
            fmt_value(dense["bits_per_byte"]),
            "",
            "",
        ]
    ]
    for level in run["compressions"]:
        for method in run["methods"]:
            name = _name(method, level)
            dec = run["decomposition"][name]
            healed = ppl.get(f"{name} healed")
            rows.append(
                [
                    name,
                    fmt_percent(level),
                    fmt_value(dec.get("calibrated_error")),
                    fmt_int(dec["parameters"]["student"]["total"] if dec.get("parameters") else None),
                    fmt_value(ppl[name]["perplexity"]),
                    fmt_value(ppl[name]["bits_per_byte"]),
                    fmt_value(healed["perplexity"]) if healed else "",
                    fmt_seconds(dec.get("seconds")),
                ]
            )
    header = ["model", "removed", "calibrated error", "parameters", "perplexity", "bits/byte", "healed", "fit"]
    how = (
        f"WikiText-2 test, the first {fmt_int(dense['max_tokens'])} tokens in {dense['windows']} windows of "
        f"{dense['seq_length']} ({fmt_int(dense['tokens_scored'])} tokens scored), the same windows for every model. "
        "Students are data-aware (calibrated on WikiText-2 training text); removed = share of the decoder "
        "layers' matrix weights; healed = after the short healing below."
    )
    return Section(
        "Perplexity against compression",
        [
            Text(how),
            Table(header, rows, [False, True, True, True, True, True, True, True]),
            Image(
                PERPLEXITY_PLOT,
                "perplexity against compression",
                "Perplexity (log scale) against the share of matrix weights removed; stars: after healing.",
            ),
        ],
    )


def _healing_section(run: dict) -> Section:
    heal, ppl = run["healing"], run["perplexity"]
    rows = []
    for name, history in heal["curves"].items():
        first, last = _last(history, "eval_loss")
        rows.append(
            [
                name,
                fmt_value(ppl[name]["perplexity"]),
                fmt_value(ppl[f"{name} healed"]["perplexity"]),
                fmt_value(first),
                fmt_value(last),
            ]
        )
    text = [
        f"The students with {fmt_percent(heal['level'])} removed, distilled from the dense model (",
        Code("distill general --corpus"),
        f", token KL) for {heal['steps']} steps; the eval loss (token KL to the dense model on held-out "
        f"WikiText-2 training text) every {heal['eval_steps']} steps, from step 0.",
    ]
    blocks = [
        Text(text),
        Table(
            ["student", "perplexity before", "after", "eval loss at step 0", "at the end"],
            rows,
            [False, True, True, True, True],
        ),
    ]
    if plots.has_losses(_histories(run)):
        blocks.append(
            Image(HEALING_PLOT, "healing curves", "Healing: training loss (solid) and eval loss (dashed) against step.")
        )
    return Section("Healing", blocks)


def _histories(run: dict) -> dict:
    return {name: {"general": history} for name, history in run["healing"]["curves"].items()}


def _speed_section(run: dict) -> Section:
    speed = run["speed"]
    rows = []
    for name, tps in speed["tokens_per_second"].items():
        up = speed["speedups"].get(name, {}).get("median") if name != speed["baseline"] else 1.0
        rows.append(
            [
                name,
                f"{tps:.1f}",
                fmt_percent(speed["seconds"][name]["spread"]),
                fmt_ratio(up) if finite(up) else NOT_MEASURED,
            ]
        )
    how = (
        f"Batch-1 greedy decoding with the KV cache: a {speed['prompt_tokens']}-token prompt and exactly "
        f"{speed['new_tokens']} new tokens, tokens/s of the whole call; median of interleaved rounds, "
        f"{speed['threads']} threads on {speed['cores']} cores, float32, eager PyTorch."
    )
    if not speed["trusted"]:
        how += f" Speed-ups not measured: {speed['reason']}."
    return Section(
        "Decode speed",
        [Text(how), Table(["model", "tokens/s", "spread", "speed-up"], rows, [False, True, True, True])],
    )


def _continuations_section(run: dict) -> Section:
    said = run["continuations"]
    blocks = [Text("Greedy continuations (no sampling) of fixed prompts, every model given the same prompt.")]
    for i, prompt in enumerate(run["prompts"]):
        blocks.append(Text([Strong(prompt), " ..."]))
        blocks.append(
            Table(["model", "continuation"], [[name, texts[i]] for name, texts in said.items()], [False, False])
        )
    return Section("Continuations", blocks)


def build_llm_document(run: dict) -> tuple[list, list[Section]]:
    """(intro blocks, sections) of the decoder demo's report."""
    ppl = run["perplexity"]
    dense = ppl["dense"]["perplexity"]
    intro = [Text(["Dense model: ", Code(run["teacher"]), f"; perplexity {fmt_value(dense)} on WikiText-2 test."])]
    healed = {n: r["perplexity"] for n, r in ppl.items() if n.endswith(" healed") and finite(r["perplexity"])}
    if healed:
        best = min(healed, key=healed.get)
        intro.append(
            Text(
                [
                    "Best healed student: ",
                    Strong(best),
                    f", perplexity {fmt_value(healed[best])} ({fmt_ratio(healed[best] / dense)} the dense model's).",
                ]
            )
        )
    sections = [_perplexity_section(run), _healing_section(run), _speed_section(run), _continuations_section(run)]
    stages = [Stage(name=s["name"], seconds=s["seconds"], path=s.get("path")) for s in run["stages"]]
    sections.append(stages_section(stages))
    settings = flatten_settings(run["settings"])
    sections.append(
        Section("Settings", [Table(["setting", "value"], [[k, Code(v)] for k, v in settings], [False, False])])
    )
    return intro, sections


def render_llm_report(run: dict, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write out_dir/report.md, report.html and plots/*.png; return {relative path: path} written."""
    out_dir = Path(out_dir)
    histories = _histories(run)
    drawn = [PERPLEXITY_PLOT] + ([HEALING_PLOT] if plots.has_losses(histories) else [])
    with atomic_dir(out_dir / PLOTS_DIR, "report plots", overwrite=overwrite) as tmp:
        plots.perplexity_vs_compression(
            _points(run), run["perplexity"]["dense"]["perplexity"], Path(tmp) / Path(PERPLEXITY_PLOT).name
        )
        if HEALING_PLOT in drawn:
            plots.loss_curves(histories, Path(tmp) / Path(HEALING_PLOT).name)
    intro, sections = build_llm_document(run)
    written = {rel: out_dir / rel for rel in drawn}
    for rel, text in (
        ("report.md", to_markdown(run["title"], intro, sections)),
        ("report.html", to_html(run["title"], intro, sections)),
    ):
        with atomic_file(out_dir / rel, encoding="utf-8") as handle:
            handle.write(text)
        written[rel] = out_dir / rel
    log.info("wrote %s (%d plots)", out_dir / "report.html", len(drawn))
    return written
