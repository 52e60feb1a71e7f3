"""The serving measurement as tables: the report's "What you ship" section and the plain-text table
of `tensorslim report`, both from one list of rows (a parsed `run.Serving`)."""

from __future__ import annotations

from .document import Section, Table, Text
from .formats import fmt_int, fmt_ratio
from .run import EngineCell, Serving, finite

MB = 2**20
SHORT = {"eager": "eager", "compile": "compile", "onnxruntime": "ORT"}
UNAVAILABLE = "unavailable"
NOT_MEASURED = "not measured"


def fmt_mb(value) -> str:
    """MiB -> '86.7' (one decimal; two below 10: '0.13'; 'n/a' when missing)."""
    if not finite(value):
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _number(cell: EngineCell, key: str, digits: int) -> str:
    if not cell.available:
        return UNAVAILABLE
    value = getattr(cell, key)
    return f"{value:,.{digits}f}" if finite(value) else NOT_MEASURED


def _peak(cell: EngineCell) -> str:
    if not cell.available:
        return "—"
    memory = cell.memory
    return fmt_mb(memory.peak_mb) if memory is not None and memory.peak_mb is not None else "n/a"


def _speedup(serving: Serving, cell: EngineCell, key: str) -> str:
    if not cell.available:
        return UNAVAILABLE
    ratio = getattr(cell, key)
    return fmt_ratio(ratio.median) if ratio is not None and ratio.median is not None else NOT_MEASURED


def serving_rows(serving: Serving) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per model its counts, bytes on disk, batch-1 latency and batch-N throughput per
    engine, and peak MiB per engine ("a / b / c" in the engines' order)."""
    s, engines = serving.settings, serving.settings.engines
    names = [SHORT.get(e, e) for e in engines]
    header = ["model", "params", "bytes on disk", "matrices"]
    header += [f"{n} b{s.latency_batch} ms" for n in names]
    header += [f"{n} b{s.throughput_batch} seq/s" for n in names]
    header.append(f"peak MB ({' / '.join(names)})")
    rows = []
    for name, model in serving.models.items():
        cells = [model.engines[e] for e in engines]
        rows.append(
            [
                name + (" (int8)" if model.int8 else ""),
                fmt_int(model.parameters),
                f"{fmt_int(model.disk_bytes)} ({fmt_mb(model.disk_bytes / MB)} MB)",
                fmt_int(model.matrix_weights),
                *(_number(c, "latency_ms", 2) for c in cells),
                *(_number(c, "throughput_seq_per_s", 1) for c in cells),
                " / ".join(_peak(c) for c in cells),
            ]
        )
    return header, rows


def speedup_rows(serving: Serving) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of each model's speed-up over the baseline model in the same engine."""
    s, engines = serving.settings, serving.settings.engines
    names = [SHORT.get(e, e) for e in engines]
    header = ["model", *(f"{n} b{s.latency_batch}" for n in names), *(f"{n} b{s.throughput_batch}" for n in names)]
    rows = []
    for name, model in serving.models.items():
        if name == serving.baseline:
            continue
        cells = [model.engines[e] for e in engines]
        rows.append(
            [
                name,
                *(_speedup(serving, c, "latency_speedup") for c in cells),
                *(_speedup(serving, c, "throughput_speedup") for c in cells),
            ]
        )
    return header, rows


def serving_notes(serving: Serving) -> list[str]:
    """How it was measured, each timing's verdict, and why each unavailable cell is so."""
    s = serving.settings
    notes = [
        f"The whole model (tokenizer tensors in, outputs out) on random tokens of sequence length {s.seq_len}, "
        f"CPU, float32 (int8 models as stored), {s.threads} threads on {s.cores} cores; every available model "
        f"and engine timed in the same interleaved rounds, median per call; compile = torch.compile "
        f"({s.compile_backend}); ORT = ONNX Runtime on the graph `tensorslim export --format onnx` writes. "
        "Params: every stored weight; bytes on disk: the weight files; matrices: the layers' projection "
        "weights as the paper counts them (a student's factors). Peak MB: resident memory (MiB) of a fresh "
        f"process running one batch-{s.throughput_batch} call after a warm-up, above what it held before "
        "loading the model (docs/report.md)."
    ]
    for key, verdict in serving.timing.items():
        if not verdict.trusted:
            notes.append(f"Speed-ups at {key} not measured: {verdict.reason}; medians shown as measured.")
    for name, model in serving.models.items():
        for engine, cell in model.engines.items():
            if not cell.available:
                notes.append(f"{name} in {engine}: {UNAVAILABLE}, {cell.reason}.")
            elif cell.memory is not None and cell.memory.reason:
                notes.append(f"{name} in {engine}: peak memory not measured, {cell.memory.reason}.")
    return notes


def serving_section(serving: Serving) -> Section:
    """The report's "What you ship" section."""
    header, rows = serving_rows(serving)
    speed_header, speed = speedup_rows(serving)
    blocks = [Table(header, rows, [False] + [True] * (len(header) - 1))]
    if speed:
        blocks += [
            Text(f"Speed-up over {serving.baseline} in the same engine (median of per-round ratios):"),
            Table(speed_header, speed, [False] + [True] * (len(speed_header) - 1)),
        ]
    blocks += [Text(note) for note in serving_notes(serving)]
    return Section("What you ship", blocks)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with two spaces; the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    )


def format_serving(serving: Serving) -> str:
    """The serving tables and notes as plain text (`tensorslim report --serving`)."""
    parts = [text_table(*serving_rows(serving))]
    header, speed = speedup_rows(serving)
    if speed:
        parts.append(f"speed-up over {serving.baseline}, same engine:\n" + text_table(header, speed))
    return "\n\n".join(parts + ["\n".join(serving_notes(serving))])
