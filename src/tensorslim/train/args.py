"""transformers' `TrainingArguments` for tensorslim's training runs: common defaults, typed construction.

The library builds `TrainingArguments` from settings (`training_args`); only the CLI parses flags
(`tensorslim.cli.flags`). Defaults come from `COMMON` then `tensorslim.train.recipes`, and give way
to the caller's settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..errors import TensorslimError

#: Defaults of every tensorslim training run, on top of transformers' own.
COMMON = dict(
    report_to=["tensorboard"],
    logging_steps=50,
    save_strategy="steps",
    save_steps=500,
    save_total_limit=2,
    seed=42,
    remove_unused_columns=False,
    disable_tqdm=False,
    dataloader_num_workers=0,
    dataloader_pin_memory=torch.cuda.is_available(),
    # accelerate runs torchrun workers as one DDP job on CPU only when told the device is the CPU
    use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
)


def training_args(output_dir: str | Path, defaults: dict, **settings) -> TrainingArguments:
    """`TrainingArguments` writing to `output_dir`: `COMMON`, then `defaults` (a recipe), then `settings`."""
    if "output_dir" in settings:
        raise TensorslimError("output_dir is set by tensorslim", "choose where output goes with the `out` argument")
    args = TrainingArguments(**{**COMMON, **defaults, **settings, "output_dir": str(output_dir)})
    check_distributed(args)
    return args


def check_distributed(args: TrainingArguments) -> None:
    """Refuse to let torchrun workers train as independent single-process jobs, and FSDP on CPU
    (accelerate enables FSDP only on accelerators: a CPU run would silently train without it)."""
    if args.fsdp and args.device.type == "cpu":
        raise TensorslimError(
            "--fsdp needs GPUs: accelerate turns FSDP on only for accelerator devices and would run this "
            "CPU job without sharding",
            "drop --fsdp on CPU (torchrun workers then train with DDP), or launch on GPUs (docs/training.md)",
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise TensorslimError(
            f"launched with WORLD_SIZE={launched} but the Trainer sees {args.world_size} process(es)",
            "on a machine without GPUs pass --use_cpu (and --ddp_backend gloo); check that every worker reaches "
            "MASTER_ADDR:MASTER_PORT",
        )


def for_run(args: TrainingArguments | None, out: Path, defaults: dict) -> TrainingArguments:
    """`args` (or `defaults` when None) writing checkpoints and logs to <out>/checkpoints."""
    from .run_dir import CHECKPOINTS

    output_dir = Path(out) / CHECKPOINTS
    if args is None:
        return training_args(output_dir, defaults)
    args.output_dir = str(output_dir)
    return args
