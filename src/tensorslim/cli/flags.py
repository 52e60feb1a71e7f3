"""Flag helpers shared by the subcommands: hidden aliases of renamed flags, and transformers'
`TrainingArguments` flags for the training commands.

Training commands accept every `TrainingArguments` flag under its usual name (``--max_steps``,
``--per_device_train_batch_size``, ``--bf16``, ``--save_steps`` ...) as transformers' example
scripts do; they are parsed with `HfArgumentParser` from the arguments tensorslim's own parser did
not recognise, on top of the paper's defaults (`tensorslim.train.recipes`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from ..errors import TensorslimError
from ..train.args import COMMON, check_distributed

#: Flags that tensorslim sets itself (from --out).
RESERVED = ("output_dir",)


def add_hidden_alias(parser, alias: str, dest: str, **kwargs) -> None:
    """Accept `alias` (an old spelling) for the flag stored in `dest`, without listing it in --help."""
    parser.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def _parser(defaults: dict) -> HfArgumentParser:
    parser = HfArgumentParser(TrainingArguments)
    parser.set_defaults(**defaults)
    return parser


def training_help() -> str:
    """The help text of every accepted `TrainingArguments` flag."""
    return _parser({}).format_help()


def passed_flags(argv: list[str]) -> set[str]:
    """Names (underscored, without dashes) of the flags present in `argv`."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def parse_training_args(argv: list[str], output_dir: str | Path, defaults: dict) -> TrainingArguments:
    """`TrainingArguments` from `argv`, `defaults` (then `train.args.COMMON`) filling what `argv` leaves out."""
    reserved = passed_flags(argv) & set(RESERVED)
    if reserved:
        raise TensorslimError(f"--{reserved.pop()} is set by tensorslim", "use --out DIR to choose where output goes")
    parser = _parser({**COMMON, **defaults, "output_dir": str(output_dir)})
    try:
        (args, remaining) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except SystemExit:
        raise TensorslimError(
            f"invalid training flags {' '.join(argv)}",
            "see `tensorslim <command> --help-training` for the TrainingArguments flags",
        ) from None
    except ValueError as exc:
        raise TensorslimError(f"invalid training arguments: {exc}", "fix the flag values") from None
    if remaining:
        raise TensorslimError(
            f"unknown flag(s): {' '.join(remaining)}",
            "see --help for tensorslim's flags and --help-training for TrainingArguments flags",
        )
    check_distributed(args)
    return args


class _TrainingHelp(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(training_help())
        parser.exit()


def add_training_flags_help(parser) -> None:
    """Give a subcommand parser --help-training and an epilog pointing at it."""
    parser.add_argument(
        "--help-training",
        action=_TrainingHelp,
        nargs=0,
        help="list the transformers TrainingArguments flags this command also accepts, and exit",
    )
    parser.epilog = (
        (parser.epilog or "") + " Any transformers TrainingArguments flag is accepted under its usual "
        "name (e.g. --max_steps 1000 --per_device_train_batch_size 16 --bf16 --save_steps 200 "
        "--eval_strategy steps); they override the paper's defaults shown here."
    ).strip()
    parser.set_defaults(accepts_extra=True)


def add_run_flags(parser) -> None:
    """The flags every training command shares, and --help-training (see add_training_flags_help)."""
    parser.add_argument("--max-train-samples", type=int, default=None, help="train on the first N examples only")
    parser.add_argument(
        "--pad-to-max-length",
        action="store_true",
        help="pad every batch to the maximum length (equal shapes on all workers) instead of its longest sequence",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (the old one stays until the new run is complete)",
    )
    add_training_flags_help(parser)
