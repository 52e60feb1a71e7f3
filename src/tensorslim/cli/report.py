"""`tensorslim report`: parameters, FLOPs per token and measured CPU/GPU speed, against the teacher."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .flags import add_hidden_alias

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="parameters, FLOPs per token and measured throughput of a model (against its teacher)",
        description="Measure a student (and its teacher, interleaved in the same run) and print a table; the "
        "same numbers are written as JSON. When the machine is too busy for a steady measurement "
        "(after up to 3 attempts), the speed-up is reported as not measured instead of a number.",
    )
    p.add_argument("--model", required=True, help="model directory (student or any BERT-family model)")
    p.add_argument("--teacher", help="teacher directory to compare against")
    p.add_argument("--batch-size", type=int, default=32, help="throughput batch size (default 32)")
    p.add_argument("--seq-length", type=int, default=128, help="throughput sequence length (default 128)")
    add_hidden_alias(p, "--seq-len", "seq_length", type=int)
    p.add_argument(
        "--seconds", type=float, default=3.0, help="time spent measuring each model, per attempt (default 3)"
    )
    p.add_argument("--device", default="cpu", help="device for throughput, e.g. cpu or cuda (default cpu)")
    p.add_argument(
        "--threads", type=int, help="CPU threads (default: torch's, capped at the cores available to the process)"
    )
    p.add_argument(
        "--serving",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also measure what you ship (CPU): parameters, bytes on disk, batch-1 latency and --batch-size "
        "throughput in eager PyTorch, torch.compile and ONNX Runtime, and peak memory (docs/report.md)",
    )
    p.add_argument("--int8", help="an int8 directory (tensorslim export --format int8) to add to --serving")
    p.add_argument("--json", help="where to write the JSON (default: MODEL/report.json)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..io import write_json
    from ..report.serving import ServingSettings
    from ..report.summary import check_report_settings, format_report, model_report
    from ..validate import check_output_file

    out = Path(args.json) if args.json else Path(args.model) / "report.json"
    serving = (
        ServingSettings(
            seq_len=args.seq_length, throughput_batch=args.batch_size, seconds=args.seconds, threads=args.threads
        )
        if args.serving
        else None
    )
    check_report_settings(
        args.model,
        args.teacher,
        args.batch_size,
        args.seq_length,
        args.seconds,
        args.device,
        args.threads,
        serving,
        args.int8,
    )
    check_output_file(out, "--json", ours=("settings", "model"))  # never over a file another tool wrote
    report = model_report(
        args.model,
        args.teacher,
        seq_len=args.seq_length,
        batch_size=args.batch_size,
        seconds=args.seconds,
        device=args.device,
        threads=args.threads,
        serving=serving,
        int8_dir=args.int8,
    )
    print(format_report(report))
    write_json(out, report)
    log.info("wrote %s", out)
