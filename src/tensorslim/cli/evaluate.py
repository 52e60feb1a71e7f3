"""`tensorslim evaluate`: GLUE dev scores of a classifier (JSON) and, optionally, test prediction
files; or, with --perplexity, a causal LM's perplexity on a text file (JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_hidden_alias

#: Flags of each kind of evaluation (dest -> flag), refused in the other.
GLUE_FLAGS = {
    "task": "--task",
    "glue_dir": "--glue-dir",
    "predict": "--predict",
    "max_seq_length": "--max-seq-length",
    "max_eval_samples": "--max-eval-samples",
    "teacher": "--teacher",
}
PERPLEXITY_FLAGS = {"seq_length": "--seq-length", "max_tokens": "--max-tokens"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="score a classifier on GLUE dev sets, or a causal LM's perplexity on a text",
        description="Score a sequence classifier on every dev split of a GLUE task (MNLI: matched and "
        "mismatched, each with its own loader) and write eval_results.json; --predict also "
        "writes GLUE-server test prediction files (<TASK>.tsv). With --perplexity FILE instead: score a "
        "causal LM (dense or a decomposed student) by the LLM compression papers' protocol (the file's "
        "lines joined with blank lines, non-overlapping windows of --seq-length tokens, exp of the mean "
        "token negative log-likelihood; also bits per byte) and write perplexity_results.json.",
    )
    p.add_argument("--model", required=True, type=Path, help="model directory")
    p.add_argument("--task", default=None, help="GLUE task name")
    p.add_argument("--glue-dir", default=None, type=Path, help="GLUE root holding <TASK>/dev.tsv")
    p.add_argument(
        "--perplexity",
        type=Path,
        default=None,
        metavar="FILE",
        help="score a causal LM's perplexity on this UTF-8 text file (e.g. WikiText-2's wiki.test.raw) instead of GLUE",
    )
    p.add_argument("--out", type=Path, default=None, help="where results go (default: the model directory)")
    p.add_argument("--predict", action="store_true", help="also write test-set prediction files")
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="GLUE token limit (default: the one the model was trained with, else 64 CoLA/SST-2, 128)",
    )
    p.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="--perplexity window in tokens (default: 2048, or the model's context if shorter)",
    )
    add_hidden_alias(p, "--seq-len", "seq_length", type=int)
    p.add_argument(
        "--max-tokens", type=int, default=None, help="--perplexity on the text's first N tokens only (quick runs)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default: 64 examples; 1 window with --perplexity)"
    )
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


def given(args, flags: dict[str, str]) -> list[str]:
    """The flags of `flags` set on the command line (a flag's default is None or False)."""
    values = {flag: getattr(args, dest) for dest, flag in flags.items()}
    return [flag for flag, value in values.items() if value is not None and value is not False]


def run(args) -> None:
    from ..errors import TensorslimError

    if args.perplexity is not None:
        if given(args, GLUE_FLAGS):
            raise TensorslimError(
                f"--perplexity does not take {', '.join(given(args, GLUE_FLAGS))}",
                "score perplexity (--perplexity FILE) and GLUE (--task, --glue-dir) in two runs",
            )
        return run_perplexity(args)
    if given(args, PERPLEXITY_FLAGS):
        raise TensorslimError(
            f"{', '.join(given(args, PERPLEXITY_FLAGS))} only apply with --perplexity FILE",
            "pass --perplexity FILE to score a causal LM, or leave them out for GLUE (whose limit is --max-seq-length)",
        )
    if args.task is None or args.glue_dir is None:
        raise TensorslimError(
            "evaluate needs --task and --glue-dir (GLUE), or --perplexity FILE (a causal LM's perplexity)",
            "e.g. tensorslim evaluate --model M --task SST-2 --glue-dir GLUE",
        )
    run_glue(args)


def run_perplexity(args) -> None:
    from ..evaluate.run import evaluate_perplexity

    results = evaluate_perplexity(
        args.model,
        args.perplexity,
        args.out,
        seq_length=args.seq_length,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size if args.batch_size is not None else 1,
        device=args.device,
    )
    bpb = results["bits_per_byte"]
    rows = [
        ("model", results["model"]),
        ("text", results["text"]),
        ("windows", f"{results['windows']} x {results['seq_length']} tokens"),
        ("tokens scored", f"{results['tokens_scored']:,} of {results['tokens_in_text']:,}"),
        ("nll (nats/token)", f"{results['nll']:.4f}"),
        ("perplexity", f"{results['perplexity']:.4f}"),
        ("bits per byte", "n/a" if bpb is None else f"{bpb:.4f}"),
    ]
    for name, value in rows:
        print(f"{name:<18}{value}")


def run_glue(args) -> None:
    from ..train import evaluate

    results = evaluate(
        args.model,
        args.task,
        args.glue_dir,
        args.out,
        predict_test=args.predict,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size if args.batch_size is not None else 64,
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
