"""The paper's training recipes (docs/method.md, section 5) as defaults that flags override."""

from __future__ import annotations

from ..distill.config import DistillationConfig

#: TrainingArguments defaults of general distillation: AdamW lr 1e-4, 10% linear warm-up then
#: linear decay, weight decay 0.01 (never on biases / LayerNorm: Trainer's rule), clip 1.0, batch 32
#: per worker. The paper's 2 epochs are the 2 differently masked epochs `tensorslim pregenerate`
#: writes by default, read one after the other: one pass over the pregenerated data.
GENERAL_TRAINING = dict(
    learning_rate=1e-4,
    warmup_steps=0.1,
    lr_scheduler_type="linear",
    weight_decay=0.01,
    max_grad_norm=1.0,
    num_train_epochs=1.0,
    per_device_train_batch_size=32,
)

#: Task distillation: lr 5e-5, batch 32; stage 1 at a constant rate, stage 2 with 10% warm-up + decay.
TASK_TRAINING = dict(
    learning_rate=5e-5,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    weight_decay=0.01,
    max_grad_norm=1.0,
)
STAGE_SCHEDULE = {
    1: dict(lr_scheduler_type="constant", warmup_steps=0),
    2: dict(lr_scheduler_type="linear", warmup_steps=0.1),
}

#: Teacher fine-tuning (BERT's recipe): lr 2e-5, 3 epochs, 10% warm-up, batch 32.
FINETUNE_TRAINING = dict(
    learning_rate=2e-5,
    num_train_epochs=3.0,
    warmup_steps=0.1,
    weight_decay=0.01,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    max_grad_norm=1.0,
)

#: Task distillation epochs per task: (stage 1 intermediate layers, stage 2 logits).
TASK_EPOCHS = {
    "CoLA": (20, 30),
    "MNLI": (3, 3),
    "MRPC": (20, 20),
    "SST-2": (5, 5),
    "STS-B": (15, 5),
    "QQP": (3, 3),
    "QNLI": (10, 10),
    "RTE": (20, 20),
}
#: Epochs for tasks the paper does not list (WNLI, AX ...).
DEFAULT_TASK_EPOCHS = (10, 10)


def task_epochs(task_name: str) -> tuple[float, float]:
    return TASK_EPOCHS.get(task_name, DEFAULT_TASK_EPOCHS)


def general_objective(causal: bool = False, factored_embeddings: bool = False) -> DistillationConfig:
    """The paper's general distillation: last-layer attention scores + last-layer hidden states;
    for a causal-LM teacher, the KL of the next-token distributions at temperature 1 (healing).
    A student with factorised word embeddings also matches the embedding layer's output
    (TinyBERT's `embedding` term)."""
    extra = ["embedding"] if factored_embeddings else []
    if causal:
        return DistillationConfig(losses=["token_kl", *extra], layer_map="last", temperature=1.0)
    return DistillationConfig(losses=["attention", "hidden", *extra], layer_map="last")


def task_objectives(is_regression: bool, factored_embeddings: bool = False) -> dict[int, DistillationConfig]:
    """Stage 1: attention + hidden on every (uniformly mapped) layer, plus the embedding layer's
    output for a student with factorised word embeddings; stage 2: logits."""
    extra = ["embedding"] if factored_embeddings else []
    return {
        1: DistillationConfig(losses=["attention", "hidden", *extra], layer_map="uniform"),
        2: DistillationConfig(losses=["regression" if is_regression else "logits"], layer_map="last"),
    }
