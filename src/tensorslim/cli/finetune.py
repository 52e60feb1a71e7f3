"""`tensorslim finetune`: fine-tune a BERT (or a decomposed student) on a GLUE task -> the task teacher."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ..train.recipes import FINETUNE_TRAINING
    from .flags import add_hidden_alias, add_run_flags

    p = subparsers.add_parser(
        "finetune",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="fine-tune a model on a GLUE task (makes the task-distillation teacher)",
        description="Fine-tune a BERT-family model or a decomposed student on one GLUE task and save the "
        "classifier (with tokenizer and the task's label names) to --out. Defaults: "
        + ", ".join(f"{k}={v}" for k, v in FINETUNE_TRAINING.items())
        + "; max length 64 for CoLA/SST-2, else 128.",
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (pre-trained encoder or classifier)")
    p.add_argument("--task", required=True, help="GLUE task: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI")
    p.add_argument("--glue-dir", required=True, type=Path, help="GLUE root holding <TASK>/train.tsv, dev.tsv")
    p.add_argument("--out", required=True, type=Path, help="output directory: final model + checkpoints/")
    p.add_argument("--max-seq-length", type=int, default=None, help="token limit; unset: 64 for CoLA/SST-2, else 128")
    p.add_argument("--aug", action="store_true", help="train on train_aug.tsv (tensorslim augment)")
    add_hidden_alias(p, "--train-split", "train_split", choices=["train", "train_aug"])
    add_run_flags(p)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train import finetune
    from ..train.recipes import FINETUNE_TRAINING
    from ..train.run_dir import CHECKPOINTS
    from .flags import parse_training_args

    training = parse_training_args(
        args.extra, args.out / CHECKPOINTS, {**FINETUNE_TRAINING, "metric_for_best_model": "score"}
    )
    split = "train_aug" if args.aug else getattr(args, "train_split", "train")  # --train-split: the old spelling
    finetune(
        args.model,
        args.task,
        args.glue_dir,
        args.out,
        training,
        max_seq_length=args.max_seq_length,
        train_split=split,
        max_train_samples=args.max_train_samples,
        pad_to_max_length=args.pad_to_max_length,
        resume=args.resume,
        overwrite=args.overwrite,
    )
