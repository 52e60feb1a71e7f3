"""Run a configured Trainer to the end and save the final model, or stop safely on a signal."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from ..distill.trainer import GracefulStop
from . import run_dir

log = logging.getLogger(__name__)


class LogProgress(TrainerCallback):
    """With --disable_tqdm, report each log entry through `logging` (unbuffered, timestamped)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            log.info("step %d/%d: %s", state.global_step, state.max_steps,
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()))


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; rerun with --resume."""


def train_and_save(trainer, out: Path, resume_from: Path | None, tokenizer, info: dict) -> dict:
    """Train (resuming from `resume_from` if given), evaluate if there is an eval set, save to `out`.

    Returns the metrics also written to <out>/tensorslim_training.json. Raises TrainingInterrupted
    when a signal stopped training (a checkpoint was saved first, nothing final was written).
    """
    stop = GracefulStop()
    trainer.add_callback(stop)
    if trainer.args.disable_tqdm:
        trainer.add_callback(LogProgress())
    resume = resume_from or trainer.args.resume_from_checkpoint
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.signal is not None:
        raise TrainingInterrupted(f"stopped at step {trainer.state.global_step} after saving a checkpoint in "
                                  f"{trainer.args.output_dir}; rerun the same command with --resume to continue")
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    info = {**info, "global_step": trainer.state.global_step, "metrics": metrics,
            "log_history": trainer.state.log_history}
    staged = run_dir.staging_dir(out)
    if trainer.is_world_process_zero():
        run_dir.clear_staging(out)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staged))  # every worker calls it; the main process writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(staged)
        run_dir.publish(out, info)
    trainer.accelerator.wait_for_everyone()
    return metrics
