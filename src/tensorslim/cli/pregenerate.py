"""`tensorslim pregenerate`: masked-LM / next-sentence pre-training data from a plain-text corpus."""

from __future__ import annotations

import argparse
import logging

from ..data.corpus import LAYOUTS
from ..data.pregenerate import FORMATS, PregenerateConfig, pregenerate
from .flags import add_hidden_alias

log = logging.getLogger(__name__)

DESCRIPTION = """\
Turn a plain-text corpus into BERT pre-training sequences for general distillation: sentence pairs
with 50% random next sentences (or single sequences with --no-nsp), 15% of tokens masked 80/10/10,
a different masking each epoch. Output: OUT/epoch_{i}/shard_{k}.arrow (read it with
tensorslim.data.pregenerate.load_pregenerated) and/or the original release's OUT/epoch_{i}.json.
The result is identical for any --workers; an interrupted run (Ctrl-C, SIGTERM) keeps its finished
shards and continues with the same command plus --resume."""


def register(subparsers) -> None:
    defaults = PregenerateConfig()
    parser = subparsers.add_parser(
        "pregenerate",
        help="generate masked-LM pre-training data from a text corpus",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files or directories (read recursively); one sentence a line with blank lines "
        "between documents, or one paragraph a line (books, WikiText); .gz/.bz2/.xz are fine",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="directory with the teacher's fast WordPiece tokenizer (e.g. the teacher model dir)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs to generate, each masked anew")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (the output does not depend on it)")
    parser.add_argument(
        "--format", choices=FORMATS, default=defaults.format, help="arrow shards, the release's JSON lines, or both"
    )
    parser.add_argument("--max-seq-length", type=int, default=defaults.max_seq_len, help="tokens per sequence")
    add_hidden_alias(parser, "--max-seq-len", "max_seq_length", type=int)
    parser.add_argument(
        "--short-seq-prob",
        type=float,
        default=defaults.short_seq_prob,
        help="probability of a shorter random target length",
    )
    parser.add_argument(
        "--masked-lm-prob", type=float, default=defaults.masked_lm_prob, help="share of tokens to predict"
    )
    parser.add_argument(
        "--max-predictions-per-seq",
        type=int,
        default=defaults.max_predictions_per_seq,
        help="cap on masked positions per sequence",
    )
    parser.add_argument("--whole-word-mask", action="store_true", help="mask all WordPiece pieces of a word together")
    parser.add_argument(
        "--no-nsp", action="store_true", help="single sequences [CLS] A [SEP] instead of next-sentence pairs"
    )
    parser.add_argument(
        "--docs-per-shard",
        type=int,
        default=defaults.docs_per_shard,
        help="documents per shard (the pool random next sentences come from; the unit of work)",
    )
    parser.add_argument(
        "--corpus-layout",
        choices=LAYOUTS,
        default=defaults.corpus_layout,
        help="how corpus files are laid out; auto decides per file",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping finished shards")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output directory that pregenerate did not write, once the new data is complete",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = PregenerateConfig(
        epochs=args.epochs,
        seed=args.seed,
        max_seq_len=args.max_seq_length,
        short_seq_prob=args.short_seq_prob,
        masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_mask=args.whole_word_mask,
        nsp=not args.no_nsp,
        docs_per_shard=args.docs_per_shard,
        format=args.format,
        corpus_layout=args.corpus_layout,
    )
    out = pregenerate(
        args.corpus,
        args.tokenizer,
        args.out,
        config,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    log.info("pre-generated data is in %s", out)
