"""transformers' `TrainingArguments` flags for tensorslim commands, with the paper's defaults.

Training commands accept every `TrainingArguments` flag under its usual name (``--max_steps``,
``--per_device_train_batch_size``, ``--bf16``, ``--save_steps`` ...) as transformers' example
scripts do; they are parsed with `HfArgumentParser` from the arguments tensorslim's own parser
did not recognise. Defaults come from `tensorslim.distill.recipes` and give way to flags.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..errors import TensorslimError

#: Defaults of every tensorslim training run, on top of transformers' own.
COMMON = dict(
    report_to=["tensorboard"], logging_steps=50, save_strategy="steps", save_steps=500, save_total_limit=2,
    seed=42, remove_unused_columns=False, disable_tqdm=False, dataloader_num_workers=0,
    dataloader_pin_memory=torch.cuda.is_available(),
    # accelerate runs torchrun workers as one DDP job on CPU only when told the device is the CPU
    use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
)

#: Flags that tensorslim sets itself (from --out).
RESERVED = ("output_dir",)


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
    """`TrainingArguments` from `argv`, `defaults` filling what `argv` leaves out."""
    reserved = passed_flags(argv) & set(RESERVED)
    if reserved:
        raise TensorslimError(f"--{reserved.pop()} is set by tensorslim", "use --out DIR to choose where output goes")
    parser = _parser({**COMMON, **defaults, "output_dir": str(output_dir)})
    try:
        (args, remaining) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except SystemExit:
        raise TensorslimError(f"invalid training flags {' '.join(argv)}",
                              "see `tensorslim <command> --help-training` for the TrainingArguments flags") from None
    except ValueError as exc:
        raise TensorslimError(f"invalid training arguments: {exc}", "fix the flag values") from None
    if remaining:
        raise TensorslimError(f"unknown flag(s): {' '.join(remaining)}",
                              "see --help for tensorslim's flags and --help-training for TrainingArguments flags")
    check_distributed(args)
    return args


def check_distributed(args: TrainingArguments) -> None:
    """Refuse to let torchrun workers train as independent single-process jobs."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise TensorslimError(
            f"launched with WORLD_SIZE={launched} but the Trainer sees {args.world_size} process(es)",
            "on a machine without GPUs pass --use_cpu (and --ddp_backend gloo); check that every worker reaches "
            "MASTER_ADDR:MASTER_PORT",
        )


class _TrainingHelp(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(training_help())
        parser.exit()


def add_training_flags_help(parser) -> None:
    """Give a subcommand parser --help-training and an epilog pointing at it."""
    parser.add_argument("--help-training", action=_TrainingHelp, nargs=0,
                        help="list the transformers TrainingArguments flags this command also accepts, and exit")
    parser.epilog = ((parser.epilog or "") + " Any transformers TrainingArguments flag is accepted under its usual "
                     "name (e.g. --max_steps 1000 --per_device_train_batch_size 16 --bf16 --save_steps 200 "
                     "--eval_strategy steps); they override the paper's defaults shown here.").strip()
    parser.set_defaults(accepts_extra=True)


def add_run_flags(parser) -> None:
    """The flags every training command shares, and --help-training (see add_training_flags_help)."""
    parser.add_argument("--max-train-samples", type=int, default=None, help="train on the first N examples only")
    parser.add_argument("--pad-to-max-length", action="store_true",
                        help="pad every batch to the maximum length (equal shapes on all workers) instead of its "
                             "longest sequence")
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (the old one stays until the new run is complete)")
    add_training_flags_help(parser)


def for_run(args: TrainingArguments | None, out: Path, defaults: dict) -> TrainingArguments:
    """`args` (or `defaults` when None) writing checkpoints and logs to <out>/checkpoints."""
    from .run_dir import CHECKPOINTS

    output_dir = str(Path(out) / CHECKPOINTS)
    if args is None:
        return TrainingArguments(**{**COMMON, **defaults, "output_dir": output_dir})
    args.output_dir = output_dir
    return args
