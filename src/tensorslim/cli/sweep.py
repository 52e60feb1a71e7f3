"""`tensorslim sweep`: several rank settings through decompose -> distill -> evaluate, with the curve."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from pathlib import Path

from ..errors import TensorslimError
from ..pipeline.sweep import RankSetting
from .decompose import parse_count

log = logging.getLogger(__name__)


def register(sub) -> None:
    from ..decomposition.methods import METHODS
    from ..pipeline.chain import TrainingPlan

    plan = TrainingPlan(max_seq_length=128)
    p = sub.add_parser(
        "sweep",
        help="decompose -> distill -> evaluate over several rank settings; score against encoder size",
        description="For each rank setting, decompose the task teacher, optionally run general distillation on "
        "pregenerated data, run two-stage task distillation and evaluate; then write a report with "
        "the score-against-encoder-size curve (the paper's main figure). Finished settings are reused "
        "when the same command is run again.",
    )
    p.add_argument("--teacher", type=Path, required=True, help="task teacher (a fine-tuned classifier directory)")
    p.add_argument("--task", required=True, help="GLUE task name, e.g. SST-2")
    p.add_argument("--glue-dir", type=Path, required=True, help="GLUE root holding <TASK>/train.tsv and dev.tsv")
    p.add_argument(
        "--ranks",
        nargs="+",
        required=True,
        help="settings: LAYER_RANKxRANK (36x128), RANK (128, for shared/lowrank) or a budget (2M)",
    )
    p.add_argument("--out", type=Path, required=True, help="sweep directory")
    p.add_argument(
        "--method",
        default="tucker",
        choices=list(METHODS),
        help="decomposition method (tensorslim decompose --help lists them)",
    )
    p.add_argument("--ops", default="all", choices=["all", "san", "ffn"], help="matrices to decompose")
    p.add_argument("--data", type=Path, help="pregenerated data for general distillation (skipped when absent)")
    p.add_argument("--general-steps", type=int, default=plan.general_steps, help="general distillation steps")
    p.add_argument("--aug", action="store_true", help="task distillation on train_aug.tsv (run augment first)")
    p.add_argument("--max-seq-length", type=int, help="tokens per example (default: the task's, 64 or 128)")
    p.add_argument("--stage1-epochs", type=float, default=plan.stage1_epochs, help="task distillation stage 1 epochs")
    p.add_argument("--stage2-epochs", type=float, default=plan.stage2_epochs, help="task distillation stage 2 epochs")
    p.add_argument("--batch-size", type=int, default=plan.batch_size, help="training batch size")
    p.add_argument("--max-train-samples", type=int, help="use only this many training examples")
    p.add_argument("--max-eval-samples", type=int, help="evaluate on only this many dev examples")
    p.add_argument("--seed", type=int, default=plan.seed, help="seed of every stage")
    p.add_argument("--force", action="store_true", help="redo finished settings")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if `sweep` did not write it (the old one stays until the sweep is complete)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..data.glue import get_task
    from ..pipeline.chain import TrainingPlan
    from ..pipeline.sweep import run_sweep

    plan = TrainingPlan(
        max_seq_length=args.max_seq_length or get_task(args.task).max_seq_length,
        general_steps=args.general_steps,
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        batch_size=args.batch_size,
        aug=args.aug,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
    )
    run = run_sweep(
        args.teacher,
        args.task,
        args.glue_dir,
        args.out,
        [parse_setting(r) for r in args.ranks],
        plan,
        args.method,
        args.data,
        args.ops,
        args.force,
        args.overwrite,
        max_eval_samples=args.max_eval_samples,
    )
    teacher = run["teacher"]["dev"]["score"]
    for s in run["students"]:
        log.info(
            "%-28s encoder %12s parameters  dev %.4f (%.1f%% of the teacher)",
            s["name"],
            f"{s['report']['parameters']['encoder']:,}",
            s["dev"]["score"],
            100 * s["dev"]["score"] / teacher,
        )
    log.info("report written to %s", run["report_paths"]["report.html"])


def parse_setting(text: str) -> RankSetting:
    """--ranks values: '36x128' -> layer rank 36 and rank 128; '128' -> rank 128; '2M' / 'budget=2M' -> a
    weight budget."""
    text = text.strip().lower().removeprefix("budget=")
    if m := re.fullmatch(r"(\d+)x(\d+)", text):
        return RankSetting(rank=int(m.group(2)), layer_rank=int(m.group(1)))
    if text.isdigit():
        return RankSetting(rank=int(text))
    if re.fullmatch(r"[\d.]+[kmg]", text):
        with contextlib.suppress(argparse.ArgumentTypeError):
            return RankSetting(budget=parse_count(text))
    raise TensorslimError(
        f"cannot read the rank setting {text!r}", "write LAYER_RANKxRANK (36x128), a rank (128) or a budget (2M)"
    )
