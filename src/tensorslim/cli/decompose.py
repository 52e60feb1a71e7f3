"""`tensorslim decompose`: teacher directory -> student directory initialised from its weights."""

from __future__ import annotations

import argparse
import logging

from ..decomposition.methods import METHODS
from ..decomposition.stacking import OPS

log = logging.getLogger(__name__)


def parse_count(text: str) -> int:
    """'2M', '750k', '1.5e6' or '2000000' -> an int."""
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:].lower(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read the budget {text!r}: write it as e.g. 2000000, 2M or 750k") from None


def register(sub) -> None:
    p = sub.add_parser(
        "decompose", help="teacher BERT -> compressed student initialised from the teacher's weights",
        description="Stack the teacher's encoder matrices into an (n, D, D) tensor, decompose it (tucker: "
                    "HOSVD + HOOI) and write a student model directory with decomposition.json. Ranks default to "
                    "the paper's 72-384 shape scaled to the teacher (d = D/2, l = n/2).",
    )
    p.add_argument("--teacher", required=True, help="teacher model directory (BERT, RoBERTa, ELECTRA, MiniLM)")
    p.add_argument("--out", required=True, help="student directory to write")
    p.add_argument("--method", default="tucker", choices=list(METHODS),
                   help="tucker (paper's IV, matrix bank), shared (III) or lowrank (II) (default: tucker)")
    p.add_argument("--rank", type=int, help="d, rank of the D x D sides (default: D/2, or from --budget)")
    p.add_argument("--layer-rank", type=int, help="l, matrix-bank size for tucker (default: n/2, or from --budget)")
    p.add_argument("--budget", type=parse_count,
                   help="choose ranks so the factors hold at most this many weights, e.g. 2M")
    p.add_argument("--ops", default="all", choices=OPS, help="matrices to decompose: all, san (attention), ffn")
    p.add_argument("--head", default="auto", choices=["auto", "base", "sequence_classification", "masked_lm"],
                   help="which head to keep (default: the one the teacher was saved with)")
    p.add_argument("--num-labels", type=int, help="labels of a new classification head (default: the teacher's)")
    p.add_argument("--tol", type=float, default=1e-4, help="HOOI stops when the relative error improves less in a sweep (default 1e-4, as the release)")
    p.add_argument("--max-iter", type=int, default=100, help="at most this many HOOI sweeps (default 100)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the HOOI sweeps: bfloat16 sweeps finish with float32 ones (2-3x faster, same or "
                        "lower error); auto (default) uses bfloat16 for large stacks where the hardware multiplies "
                        "it natively (CPUs with AMX, CUDA GPUs with bf16), float32 elsewhere")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if decompose did not write it (the old one stays until the student is saved)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..modeling.convert import decompose_to_dir
    from ..validate import check_above, check_at_least

    check_above("--tol", args.tol, 0)
    check_at_least("--max-iter", args.max_iter, 1)
    check_at_least("--num-labels", args.num_labels, 1)
    check_at_least("--budget", args.budget, 1)

    record = decompose_to_dir(args.teacher, args.out, args.method, args.rank, args.layer_rank, args.ops, args.budget,
                              args.head, args.num_labels, args.overwrite, tol=args.tol, max_iter=args.max_iter,
                              precision=args.precision)
    w = record["decomposed_weights"]
    log.info("wrote %s: %s rank=%s layer_rank=%s ops=%s, %s -> %s decomposed weights (%.1fx), relative error %.4f",
             args.out, record["method"], record["rank"], record["layer_rank"], record["ops"], f"{w['teacher']:,}",
             f"{w['student']:,}", w["ratio"], record["relative_error"])
