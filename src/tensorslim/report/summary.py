"""`tensorslim report`: parameters, FLOPs per token and measured throughput, student against teacher."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..compress.loading import load_config, load_model
from ..errors import TensorslimError
from ..validate import check_above, check_at_least, check_device
from .measure import count_parameters, encoder_matrix_weights, flops_per_token, throughput


def describe(model_dir: str | Path, batch_size: int = 32, seq_len: int = 128, seconds: float = 3.0,
             device: str = "cpu") -> dict:
    """Parameters by part, FLOPs per token and throughput of the model in `model_dir`."""
    model = load_model(model_dir)
    info = {
        "path": str(model_dir), "model_type": model.config.model_type,
        "parameters": count_parameters(model), "encoder_matrix_weights": encoder_matrix_weights(model),
        "flops_per_token": flops_per_token(model, seq_len),
        "throughput": throughput(model, batch_size, seq_len, seconds, device=device),
    }
    record = Path(model_dir) / "decomposition.json"
    if record.is_file():
        dec = json.loads(record.read_text())
        info["decomposition"] = {k: dec[k] for k in ("method", "rank", "layer_rank", "ops", "relative_error")}
    return info


def check_report_settings(model_dir, teacher_dir, batch_size: int, seq_len: int, seconds: float, device: str,
                          threads: int | None) -> None:
    """Refuse bad settings and model directories before any model is loaded or measured."""
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--seq-len", seq_len, 1)
    check_above("--seconds", seconds, 0)
    check_at_least("--threads", threads, 1)
    check_device(device)
    for path in (model_dir, teacher_dir):
        if path is not None:
            config = load_config(path)
            limit = getattr(config, "max_position_embeddings", None)
            if limit and seq_len > limit:
                raise TensorslimError(f"--seq-len {seq_len} exceeds the {limit} positions of {path}",
                                      f"pass --seq-len {limit} or less")


def model_report(model_dir, teacher_dir=None, batch_size: int = 32, seq_len: int = 128, seconds: float = 3.0,
                 device: str = "cpu", threads: int | None = None) -> dict:
    """Describe the model and, when given, the teacher measured in the same run, plus ratios."""
    check_report_settings(model_dir, teacher_dir, batch_size, seq_len, seconds, device, threads)
    if threads:
        torch.set_num_threads(threads)
    report = {"settings": {"batch_size": batch_size, "seq_len": seq_len, "device": device,
                           "threads": torch.get_num_threads(), "dtype": "float32"},
              "model": describe(model_dir, batch_size, seq_len, seconds, device)}
    if teacher_dir is not None:
        t, m = describe(teacher_dir, batch_size, seq_len, seconds, device), report["model"]
        report["teacher"] = t
        report["ratios"] = {
            "encoder_parameters": t["parameters"]["encoder"] / m["parameters"]["encoder"],
            "encoder_matrix_weights": t["encoder_matrix_weights"] / m["encoder_matrix_weights"],
            "total_parameters": t["parameters"]["total"] / m["parameters"]["total"],
            "flops_per_token": t["flops_per_token"] / m["flops_per_token"],
            "speedup": m["throughput"]["sequences_per_second"] / t["throughput"]["sequences_per_second"],
        }
    return report


def format_report(report: dict) -> str:
    """A plain-text table of the report, one column per model."""
    cols = [("model", report["model"])] + ([("teacher", report["teacher"])] if "teacher" in report else [])
    rows = [("parameters: embeddings", lambda d: f"{d['parameters']['embeddings']:,}"),
            ("parameters: encoder", lambda d: f"{d['parameters']['encoder']:,}"),
            ("  of which matrices/factors", lambda d: f"{d['encoder_matrix_weights']:,}"),
            ("parameters: pooler + head", lambda d: f"{d['parameters']['pooler'] + d['parameters']['head']:,}"),
            ("parameters: total", lambda d: f"{d['parameters']['total']:,}"),
            ("encoder GFLOPs / token", lambda d: f"{d['flops_per_token'] / 1e9:.4f}"),
            ("sequences / s", lambda d: f"{d['throughput']['sequences_per_second']:.1f}")]
    table = [["", *(name for name, _ in cols)]] + [[label, *(fn(d) for _, d in cols)] for label, fn in rows]
    if "ratios" in report:
        r = report["ratios"]
        table += [["encoder compression", f"{r['encoder_parameters']:.1f}x", ""],
                  ["FLOPs reduction", f"{r['flops_per_token']:.2f}x", ""],
                  ["speed-up (measured)", f"{r['speedup']:.2f}x", ""]]
    dec = report["model"].get("decomposition")
    if dec:
        table.append(["reconstruction error", f"{dec['relative_error']:.4f}"] + [""] * (len(cols) - 1))
    s = report["settings"]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
    lines.append(f"(throughput: {s['device']}, {s['dtype']}, batch {s['batch_size']}, sequence {s['seq_len']}, "
                 f"{s['threads']} threads)")
    return "\n".join(lines)
