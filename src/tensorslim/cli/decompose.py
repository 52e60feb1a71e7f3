"""`tensorslim decompose`: teacher directory -> student directory initialised from its weights."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def parse_count(text: str) -> int:
    """'2M', '750k', '1.5e6' or '2000000' -> an int."""
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:].lower(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read the budget {text!r}: write it as e.g. 2000000, 2M or 750k"
        ) from None


def parse_share(text: str) -> float:
    """'20%' or '0.2' -> 0.2."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read the compression {text!r}: write it as e.g. 20% or 0.2") from None


def register(sub) -> None:
    from ..compress.calibration import DEFAULT_DAMPING, DEFAULT_SAMPLES, DEFAULT_SEQ_LENGTH
    from ..compress.inplace import OPS
    from ..compress.loading import HEADS
    from ..decomposition.methods import METHODS, all_options
    from ..families import SUPPORTED_MODEL_TYPES

    p = sub.add_parser(
        "decompose",
        help="teacher -> compressed student initialised from the teacher's weights",
        description="Stack the teacher's projection matrices into groups of equal-shape slices, decompose each "
        "group (tucker: HOSVD + HOOI) and write a student directory: the teacher's own class with "
        "factored projections, plus decomposition.json. Ranks default to the paper's 72-384 shape scaled "
        "to the teacher (d = D/2, l = n/2).",
    )
    p.add_argument("--teacher", required=True, help=f"teacher model directory ({', '.join(SUPPORTED_MODEL_TYPES)})")
    p.add_argument("--out", required=True, help="student directory to write")
    p.add_argument(
        "--method",
        default="tucker",
        choices=list(METHODS),
        help="; ".join(
            f"{name}: paper's {cls.paper}, options {', '.join(o.name for o in cls.options)}"
            for name, cls in METHODS.items()
        )
        + " (default: tucker)",
    )
    for option in all_options().values():
        if not option.cli:
            continue
        p.add_argument(
            "--" + option.name.replace("_", "-"),
            type=option.type,
            default=None,
            choices=option.choices,
            help=option.help + (f" (default: {option.default})" if option.default is not None else ""),
        )
    p.add_argument(
        "--budget", type=parse_count, help="choose ranks so the factors hold at most this many weights, e.g. 2M"
    )
    p.add_argument(
        "--compression",
        type=parse_share,
        help="choose ranks so that this share of the decomposed matrices' weights is removed, e.g. 20%% "
        "(or 0.2), as the LLM compression papers state it",
    )
    p.add_argument(
        "--embedding-rank",
        type=int,
        help="also factorise the word embeddings as (vocab x R) @ (R x width), ALBERT-style; a tied output head "
        "reads the same factors (docs/embeddings.md). Default: the embeddings stay dense",
    )
    p.add_argument(
        "--embedding-compression",
        type=parse_share,
        help="factorise the word embeddings at the largest rank that removes this share of their weights, "
        "e.g. 50%% (or 0.5)",
    )
    p.add_argument(
        "--calibration",
        default="none",
        help="data the teacher streams so that the factors fit what the layers compute (their output error on "
        "it) instead of the weights: a GLUE task directory (its training sentences), a plain-text file or "
        "directory, or pregenerated shards; none (default): weight-only",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"sequences of --calibration to stream (default: {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--calibration-seq-length",
        type=int,
        default=DEFAULT_SEQ_LENGTH,
        help=f"tokens per calibration sequence, at most the model's context (default: {DEFAULT_SEQ_LENGTH})",
    )
    p.add_argument(
        "--calibration-damping",
        type=float,
        default=DEFAULT_DAMPING,
        help="ridge added to each input moment, times its mean diagonal, so that it is positive definite "
        f"(default: {DEFAULT_DAMPING}, GPTQ's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default: 0)")
    p.add_argument("--ops", default="all", choices=list(OPS), help="matrices to decompose: all, san (attention), ffn")
    p.add_argument(
        "--head",
        default="auto",
        choices=["auto", *HEADS],
        help="which head to keep (default: the one the teacher was saved with)",
    )
    p.add_argument("--num-labels", type=int, help="labels of a new classification head (default: the teacher's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if decompose did not write it (the old one stays until the student is saved)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..compress.api import decompose_to_dir
    from ..decomposition.methods import METHODS, all_options
    from ..errors import TensorslimError
    from ..validate import check_above, check_at_least

    check_above("--tol", args.tol, 0)
    check_at_least("--max-iter", args.max_iter, 1)
    check_at_least("--num-labels", args.num_labels, 1)
    check_at_least("--budget", args.budget, 1)
    check_at_least("--calibration-samples", args.calibration_samples, 1)
    check_at_least("--calibration-seq-length", args.calibration_seq_length, 2)
    if not args.calibration_damping >= 0:
        raise TensorslimError(
            f"--calibration-damping {args.calibration_damping} is negative", "pass a damping of 0 or more, e.g. 0.01"
        )

    accepted = {o.name for o in METHODS[args.method].options}
    flagged = [name for name, option in all_options().items() if option.cli]
    given = {name: getattr(args, name) for name in flagged if getattr(args, name) is not None}
    flags = lambda names: ", ".join("--" + n.replace("_", "-") for n in sorted(names))  # noqa: E731
    if set(given) - accepted:
        raise TensorslimError(
            f"--method {args.method} takes no {flags(set(given) - accepted)}",
            f"{args.method} accepts {flags(accepted)}",
        )
    options = given
    record = decompose_to_dir(
        args.teacher,
        args.out,
        args.method,
        ops=args.ops,
        budget=args.budget,
        compression=args.compression,
        head=args.head,
        num_labels=args.num_labels,
        overwrite=args.overwrite,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        calibration_seq_length=args.calibration_seq_length,
        damping=args.calibration_damping,
        seed=args.seed,
        embedding_rank=args.embedding_rank,
        embedding_compression=args.embedding_compression,
        **options,
    )
    w = record["decomposed_weights"]
    by_group = record["options"].get("group_ranks")
    log.info(
        "wrote %s: %s rank=%s layer_rank=%s ops=%s, %s -> %s decomposed weights (%.1fx), relative error %.4f",
        args.out,
        record["method"],
        f"{min(by_group.values())}-{max(by_group.values())} by group" if by_group else record["rank"],
        record["layer_rank"],
        record["ops"],
        f"{w['teacher']:,}",
        f"{w['student']:,}",
        w["ratio"],
        record["relative_error"],
    )
    if record["embeddings"] is not None:
        e = record["embeddings"]
        log.info(
            "word embeddings: rank %d (%s init), %s -> %s weights, relative error %.4f",
            e["rank"],
            e["init"],
            f"{e['weights']['teacher']:,}",
            f"{e['weights']['student']:,}",
            e["relative_error"],
        )
    if record["calibrated_error"] is not None:
        log.info("calibrated output error %.4f on %s", record["calibrated_error"], args.calibration)
