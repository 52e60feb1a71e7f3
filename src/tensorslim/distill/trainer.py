"""`DistillationTrainer`: transformers' `Trainer` with a frozen teacher and a named-loss objective.

Everything else (DDP via torchrun, bf16/fp16, gradient accumulation, safetensors checkpoints,
resume, TensorBoard, evaluation, best-checkpoint selection, FSDP of the student) is the library's.
The teacher is kept outside the accelerator: eval mode, no gradients, on the student's device (in
bfloat16 under --bf16, half the memory of a float32 copy), never wrapped in DDP or FSDP.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import Trainer

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
        self.teacher = freeze(teacher, self.args.device, torch.bfloat16 if self.args.bf16 else None)
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
        batch = LossBatch(
            attention_mask=inputs["attention_mask"],
            layer_map=self.layer_map,
            labels=inputs.get("labels"),
            temperature=config.temperature,
            causal=self.causal,
        )
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
            cause = (
                "fp16 overflow: use --bf16 or full precision"
                if self.args.fp16
                else "learning rate too high: lower --learning_rate or raise --warmup_steps"
            )
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
