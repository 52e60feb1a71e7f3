"""`tensorslim evaluate`: GLUE dev scores of a classifier (JSON) and, optionally, test prediction files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="score a fine-tuned or distilled model on GLUE dev sets",
        description="Score a sequence classifier on every dev split of a GLUE task (MNLI: matched and "
        "mismatched, each with its own loader) and write eval_results.json; --predict also "
        "writes GLUE-server test prediction files (<TASK>.tsv).",
    )
    p.add_argument("--model", required=True, type=Path, help="classifier directory")
    p.add_argument("--task", required=True, help="GLUE task name")
    p.add_argument("--glue-dir", required=True, type=Path, help="GLUE root holding <TASK>/dev.tsv")
    p.add_argument("--out", type=Path, default=None, help="where results go (default: the model directory)")
    p.add_argument("--predict", action="store_true", help="also write test-set prediction files")
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="token limit (default: the one the model was trained with, else 64 CoLA/SST-2, 128)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--max-eval-samples", type=int, default=None, help="score the first N dev examples only")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="the teacher's evaluation (its eval_results.json or the directory holding it): adds the "
        "share of the teacher's margin over the constant baseline that this model keeps",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train import evaluate

    results = evaluate(
        args.model,
        args.task,
        args.glue_dir,
        args.out,
        predict_test=args.predict,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        max_eval_samples=args.max_eval_samples,
        device=args.device,
        teacher=args.teacher,
    )
    print(f"{'split':<18}{'metric':<20}value")
    for split, metrics in results["splits"].items():
        for name, value in metrics.items():
            print(f"{split:<18}{name:<20}{value:.4f}")
    baseline = results["baseline"]
    print(f"constant baseline ({baseline['predictor']}): score {baseline['score']:.4f}")
    if "teacher" in results:
        kept = results["margin_kept"]
        print(
            f"teacher score {results['teacher']['score']:.4f}; margin over the baseline kept: "
            + ("n/a (the teacher is not above the baseline)" if kept is None else f"{kept:.1%}")
        )
