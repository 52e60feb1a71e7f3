"""Training drivers: teacher fine-tuning, general and task distillation, and GLUE evaluation.

Each driver takes a `TrainingArguments` (how to train: transformers' flags) and, for distillation,
a `DistillationConfig` (what to match), and writes a finished model directory atomically.
"""

from .evaluate import evaluate
from .finetune import finetune
from .general import distill_general
from .task import distill_task

__all__ = ["distill_general", "distill_task", "evaluate", "finetune"]
