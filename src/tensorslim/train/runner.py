"""Run a configured Trainer to the end and save the final model, or stop safely on a signal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import safetensors.torch
import torch
from transformers import TrainerCallback, TrainerState

from ..errors import TensorslimError
from ..signals import GracefulStop
from . import run_dir

log = logging.getLogger(__name__)

#: What a GracefulStop of a training command tells the user on the first signal.
TRAINING_SAFE_POINT = "stopping at the next safe point (in training: after the current step, with a checkpoint)"


class LogProgress(TrainerCallback):
    """With --disable_tqdm, report each log entry through `logging` (unbuffered, timestamped)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            log.info(
                "step %d/%d: %s",
                state.global_step,
                state.max_steps,
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()),
            )


class StopTraining(TrainerCallback):
    """`stop` (a GracefulStop) as a Trainer callback: after a signal, finish the current optimizer
    step, save a checkpoint and stop; `--resume` then reaches the same final weights as an
    uninterrupted run. A `stop` the command already keeps active (`with GracefulStop() as stop`)
    stays so; otherwise it catches signals only while `Trainer.train` runs.
    """

    def __init__(self, stop: GracefulStop):
        self.stop = stop
        self._installed = False

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.stop.active:
            self.stop.signal = None
            self.stop.install()
            self._installed = True

    def on_step_end(self, args, state, control, **kwargs):
        if any_worker_signalled(self.stop, args.device):
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._installed:
            self.stop.restore()
            self._installed = False


def any_worker_signalled(stop: GracefulStop, device) -> bool:
    """Whether this process, or under DDP any process, has had a signal: all workers then stop after
    the same step and save one consistent checkpoint (one tiny all-reduce per step)."""
    if not (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        return stop.requested
    flag = torch.tensor([0 if stop.signal is None else int(stop.signal)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item() and stop.signal is None:
        stop.signal = int(flag.item())
    return bool(flag.item())


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; rerun with --resume."""


def train_and_save(
    trainer, out: Path, resume_from: Path | None, tokenizer, info: dict, stop: GracefulStop | None = None
) -> dict:
    """Train (resuming from `resume_from` if given), evaluate if there is an eval set, save to `out`.

    Returns the metrics also written to <out>/tensorslim_training.json. Raises TrainingInterrupted
    when a signal stopped training (a checkpoint was saved first, nothing final was written) or came
    before it began. `stop`: a GracefulStop the caller keeps active for the whole command; a signal
    during the final evaluation and save lets them finish, and a later call (task distillation's
    stage 2) raises before training. Without it, signals are caught only during `Trainer.train`.
    """
    stop = stop or GracefulStop(TRAINING_SAFE_POINT)
    if stop.requested:
        raise TrainingInterrupted(
            f"stopped before training into {out} began; rerun the same command with --resume to continue"
        )
    trainer.add_callback(StopTraining(stop))
    if trainer.args.disable_tqdm:
        trainer.add_callback(LogProgress())
    resume = resume_from or trainer.args.resume_from_checkpoint
    if resume and not resume_from:
        problem = run_dir.checkpoint_problem(Path(resume))
        if problem:
            raise TensorslimError(
                f"--resume_from_checkpoint {resume} cannot be resumed from: {problem}",
                "pass a complete checkpoint, or --resume to use the last complete one in --out",
            )
    if resume and _is_last_step(trainer, Path(resume)):  # the final save was cut short: redo only that
        _load_last_step(trainer, Path(resume))
        metrics = {}
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics)
    if stop.requested:
        raise TrainingInterrupted(
            f"stopped at step {trainer.state.global_step} after saving a checkpoint in "
            f"{trainer.args.output_dir}; rerun the same command with --resume to continue"
        )
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    info = {
        **info,
        "global_step": trainer.state.global_step,
        "metrics": metrics,
        "log_history": trainer.state.log_history,
    }
    staged = run_dir.staging_dir(out)
    if trainer.is_world_process_zero():
        run_dir.clear_staging(out)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staged))  # every worker calls it; the main process writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(staged)
        run_dir.publish(out, info)
    trainer.accelerator.wait_for_everyone()
    if stop.requested:
        log.warning("the signal came after training ended: the final model in %s is complete", out)
    return metrics


def _is_last_step(trainer, checkpoint: Path) -> bool:
    """True when `checkpoint` holds the last optimizer step of this run (of --max_steps when given).

    `Trainer.train` must not resume from it: transformers 5 checks max_steps only after a step, so
    it would take one step more than an uninterrupted run.
    """
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    last = trainer.args.max_steps if trainer.args.max_steps > 0 else state.get("max_steps", 0)
    return 0 < last <= state.get("global_step", 0)


def _load_last_step(trainer, checkpoint: Path) -> None:
    """Load the state and weights (the best checkpoint's with --load_best_model_at_end) of a run
    whose training had finished."""
    log.info("%s is the last training step; loading it instead of training", checkpoint)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    load_weights(
        trainer.model,
        Path(best) if trainer.args.load_best_model_at_end and best and Path(best).is_dir() else checkpoint,
    )


def load_weights(model, checkpoint: Path) -> None:
    """Load the safetensors weights of a Trainer checkpoint (one file, or shards listed in an index)
    into `model` in place; weights tied to others are stored once and load with them."""
    device = str(next(model.parameters()).device)
    index = checkpoint / "model.safetensors.index.json"
    if not index.is_file():
        safetensors.torch.load_model(model, checkpoint / "model.safetensors", device=device)
        return
    for shard in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())):
        unexpected = model.load_state_dict(
            safetensors.torch.load_file(checkpoint / shard, device=device), strict=False
        ).unexpected_keys
        if unexpected:
            raise TensorslimError(
                f"{checkpoint / shard} holds weights the model does not have: {unexpected[:3]}",
                "resume with the model the checkpoint was trained from",
            )
