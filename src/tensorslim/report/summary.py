"""`tensorslim report`: parameters, FLOPs per token and measured speed, student against teacher."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..compress.loading import load_config, load_model
from ..compress.section import int8_entry
from ..errors import TensorslimError
from ..validate import check_above, check_at_least, check_device
from .measure import count_parameters, encoder_matrix_weights, flops_per_token
from .run import parse_serving
from .serving import ServingSettings, check_serving_settings, measure_serving
from .serving_table import format_serving
from .timing import measure_models, speed_note


def describe(model_dir: str | Path, seq_len: int = 128, model=None) -> dict:
    """Parameters by part and FLOPs per token (at `seq_len`) of the model in `model_dir` (loaded unless given)."""
    model = model if model is not None else load_model(model_dir)
    info = {
        "path": str(model_dir),
        "model_type": model.config.model_type,
        "parameters": count_parameters(model),
        "encoder_matrix_weights": encoder_matrix_weights(model),
        "flops_per_token": flops_per_token(model, seq_len),
    }
    record = Path(model_dir) / "decomposition.json"
    if record.is_file():
        dec = json.loads(record.read_text())
        info["decomposition"] = {k: dec[k] for k in ("method", "rank", "layer_rank", "ops", "relative_error")}
    return info


def check_report_settings(
    model_dir,
    teacher_dir,
    batch_size: int,
    seq_len: int,
    seconds: float,
    device: str,
    threads: int | None,
    serving: ServingSettings | None = None,
    int8_dir=None,
) -> None:
    """Refuse bad settings and model directories before any model is loaded or measured."""
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--seq-len", seq_len, 1)
    check_above("--seconds", seconds, 0)
    check_at_least("--threads", threads, 1)
    check_device(device)
    if serving is None and int8_dir is not None:
        raise TensorslimError("--int8 is measured by --serving only", "add --serving, or drop --int8")
    if serving is not None:
        check_serving_settings(serving)
        if device != "cpu":
            raise TensorslimError(f"--serving measures on the CPU, not --device {device}", "pass --device cpu")
    if int8_dir is not None and int8_entry(load_config(int8_dir)) is None:
        raise TensorslimError(
            f"--int8 {int8_dir} is not an int8 model", f"tensorslim export --model {model_dir} --format int8"
        )
    for path in (model_dir, teacher_dir, int8_dir):
        if path is not None:
            config = load_config(path)
            limit = getattr(config, "max_position_embeddings", None)
            if limit and seq_len > limit:
                raise TensorslimError(
                    f"--seq-len {seq_len} exceeds the {limit} positions of {path}", f"pass --seq-len {limit} or less"
                )


def measure_dirs(model_dirs: Mapping[str, str | Path], **measure_kwargs) -> dict:
    """Speed of the models in `model_dirs` ({name: directory}, the first is the baseline), measured
    interleaved in one run: see tensorslim.report.timing.measure_models for the keys and arguments."""
    return measure_models({name: load_model(path) for name, path in model_dirs.items()}, **measure_kwargs)


def model_report(
    model_dir,
    teacher_dir=None,
    seq_len: int = 128,
    serving: ServingSettings | None = None,
    int8_dir=None,
    **measure_kwargs,
) -> dict:
    """Describe the model and, when given, the teacher; measure both interleaved; ratios against the teacher.

    `measure_kwargs` (batch_size, seconds, device, threads, ...) go to timing.measure_models. "speed"
    holds the measurement; ratios["speedup"] is None when the machine was too busy to measure it
    (speed["reason"] says why). With `serving`, "serving" holds serving.measure_serving of the
    teacher, the model and `int8_dir` (named teacher, model, int8)."""
    dirs = {"teacher": teacher_dir, "model": model_dir} if teacher_dir is not None else {"model": model_dir}
    models = {name: load_model(path) for name, path in dirs.items()}
    speed = measure_models(models, seq_len=seq_len, **measure_kwargs)
    report = {
        "settings": {k: speed[k] for k in ("batch_size", "seq_len", "device", "dtype", "threads", "cores")},
        "speed": speed,
    }
    for name, path in dirs.items():
        report[name] = describe(path, seq_len, models[name]) | {
            "throughput": {
                "sequences_per_second": speed["sequences_per_second"][name],
                "spread": speed["seconds"][name]["spread"],
            }
        }
    if teacher_dir is not None:
        t, m = report["teacher"], report["model"]
        report["ratios"] = {
            "encoder_parameters": t["parameters"]["encoder"] / m["parameters"]["encoder"],
            "encoder_matrix_weights": t["encoder_matrix_weights"] / m["encoder_matrix_weights"],
            "total_parameters": t["parameters"]["total"] / m["parameters"]["total"],
            "flops_per_token": t["flops_per_token"] / m["flops_per_token"],
            "speedup": speed["speedups"]["model"]["median"],
        }
    if serving is not None:
        served = dirs | ({"int8": int8_dir} if int8_dir is not None else {})
        report["serving"] = measure_serving(served, serving)
    return report


def format_report(report: dict) -> str:
    """A plain-text table of the report, one column per model, and how the speed was measured."""
    cols = [("model", report["model"])] + ([("teacher", report["teacher"])] if "teacher" in report else [])
    rows = [
        ("parameters: embeddings", lambda d: f"{d['parameters']['embeddings']:,}"),
        ("parameters: encoder", lambda d: f"{d['parameters']['encoder']:,}"),
        ("  of which matrices/factors", lambda d: f"{d['encoder_matrix_weights']:,}"),
        ("parameters: pooler + head", lambda d: f"{d['parameters']['pooler'] + d['parameters']['head']:,}"),
        ("parameters: total", lambda d: f"{d['parameters']['total']:,}"),
        ("encoder GFLOPs / token", lambda d: f"{d['flops_per_token'] / 1e9:.4f}"),
        ("sequences / s (median)", lambda d: f"{d['throughput']['sequences_per_second']:.1f}"),
        ("  spread of rounds", lambda d: f"{d['throughput']['spread']:.1%}"),
    ]
    table = [["", *(name for name, _ in cols)]] + [[label, *(fn(d) for _, d in cols)] for label, fn in rows]
    pad = [""] * (len(cols) - 1)
    if "ratios" in report:
        r = report["ratios"]
        speedup = "could not measure" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        table += [
            ["encoder compression", f"{r['encoder_parameters']:.1f}x", *pad],
            ["FLOPs reduction", f"{r['flops_per_token']:.2f}x", *pad],
            ["speed-up (measured)", speedup, *pad],
        ]
    dec = report["model"].get("decomposition")
    if dec:
        table.append(["reconstruction error", f"{dec['relative_error']:.4f}", *pad])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    ]
    speed = report["speed"]
    lines.append(speed_note(speed))
    lines += [f"warning: {w}" for w in speed["warnings"]]
    if "serving" in report:
        lines += ["", format_serving(parse_serving(report["serving"], "report['serving']"))]
    return "\n".join(lines)
