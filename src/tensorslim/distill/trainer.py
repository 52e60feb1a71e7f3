"""`DistillationTrainer`: transformers' `Trainer` with a frozen teacher and a named-loss objective.

Everything else (DDP via torchrun, bf16/fp16, gradient accumulation, safetensors checkpoints,
resume, TensorBoard, evaluation, best-checkpoint selection) is the library's. The teacher is kept
outside the accelerator: eval mode, no gradients, on the student's device, never wrapped in DDP.
"""

from __future__ import annotations

import logging
import signal

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..errors import TensorslimError
from .config import DistillationConfig
from .losses import LossBatch, get_loss
from .teacher import forward_features, freeze, is_causal, num_layers

log = logging.getLogger(__name__)


class NonFiniteLossError(TensorslimError):
    """The loss became NaN or infinite; training stopped before the bad step was applied or saved."""


class DistillationTrainer(Trainer):
    """Trains `model` (the student) to match `teacher` under `distill_config`.

    Each loss term is logged as ``loss_<name>`` (mean over the logging window, this process).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, teacher: nn.Module, distill_config: DistillationConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = freeze(teacher, self.args.device)
        self.distill_config = distill_config
        self.layer_map = distill_config.resolve_layer_map(num_layers(self.model), num_layers(self.teacher))
        self.causal = is_causal(self.teacher)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def distillation_loss(self, model: nn.Module, inputs: dict) -> tuple[torch.Tensor, dict, object]:
        """(weighted total, {name: term}, student features) for one batch."""
        config = self.distill_config
        needs = config.needs
        with torch.no_grad():
            teacher_model = self.teacher if "logits" in needs else getattr(self.teacher, "base_model", self.teacher)
            teacher = forward_features(teacher_model, inputs, needs, [t for _, t in self.layer_map])
        student = forward_features(model, inputs, needs, [s for s, _ in self.layer_map])
        batch = LossBatch(attention_mask=inputs["attention_mask"], layer_map=self.layer_map,
                          labels=inputs.get("labels"), temperature=config.temperature, causal=self.causal)
        terms = {name: get_loss(name)[0](student, teacher, batch) for name in config.losses}
        total = sum(config.weight(name) * term for name, term in terms.items())
        return total, terms, student

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        total, terms, student = self.distillation_loss(model, inputs)
        if model.training:
            self._check_finite(total, terms)
            for name, term in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(term.detach())
            self._term_count += 1
        return (total, student) if return_outputs else total

    def _check_finite(self, total: torch.Tensor, terms: dict) -> None:
        bad = (~torch.isfinite(total.detach())).float()
        if self.args.world_size > 1:  # every process must stop together or the others hang
            torch.distributed.all_reduce(bad)
        if bad.item():
            values = ", ".join(f"{name}={float(term.detach()):.4g}" for name, term in terms.items())
            step = self.state.global_step + 1
            cause = ("fp16 overflow: use --bf16 or full precision" if self.args.fp16
                     else "learning rate too high: lower --learning_rate or raise --warmup_steps")
            raise NonFiniteLossError(
                f"distillation loss is not finite at step {step} ({values}); no checkpoint was written for it",
                f"likely cause: {cause}; then rerun with --resume to continue from the last good checkpoint",
            )

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._term_count:
            for name, value in self._term_sums.items():
                logs[f"loss_{name}"] = round(value / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the distillation loss and, for classifiers, the student's logits and labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            total, _, student = self.distillation_loss(model, inputs)
            logits = student.logits
            if logits is None and not prediction_loss_only and "labels" in inputs:
                logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        if prediction_loss_only or logits is None or logits.dim() != 2:
            return total.detach(), None, None
        return total.detach(), logits.detach(), inputs.get("labels")


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM finish the current optimizer step, save a checkpoint and stop.

    `--resume` then continues from that checkpoint and reaches the same final weights as an
    uninterrupted run. Used as a context manager, it catches the signals for a whole command
    (loading, the final save, between the stages of task distillation) and `signal` tells the
    command to stop at its next safe point; as a plain callback only while `Trainer.train` runs.
    A second signal falls back to the previous handler (by default: stop at once).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}
        self._scoped = False

    def __enter__(self) -> GracefulStop:
        self.signal, self._scoped = None, True
        self._install()
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        self._scoped = False

    def _install(self) -> None:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, _frame):
        if self.signal is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: stopping at the next safe point (in training: after the current step, with "
                    "a checkpoint); send it again to stop at once", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._scoped:
            self.signal = None
            self._install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_worker_signalled(args.device):
            control.should_save = True
            control.should_training_stop = True

    def _any_worker_signalled(self, device) -> bool:
        """Whether this process, or under DDP any process, has had a signal: all workers then stop
        after the same step and save one consistent checkpoint (one tiny all-reduce per step)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return self.signal is not None
        flag = torch.tensor([0 if self.signal is None else int(self.signal)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())

    def on_train_end(self, args, state, control, **kwargs):
        if not self._scoped:
            self._restore()
