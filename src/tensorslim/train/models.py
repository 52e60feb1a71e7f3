"""Loading models and tokenizers for training: any BERT-family directory or a decomposed student.

Loading goes through `tensorslim.compress.loading.load_model`, which refuses unsupported families,
corrupt or truncated weights and weights that miss encoder tensors, with a message naming the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer

from ..compress.loading import infer_head, load_config, load_model
from ..errors import TensorslimError

log = logging.getLogger(__name__)

__all__ = ["check_max_length", "check_trained_task", "load_classifier", "load_config", "load_encoder", "load_tokenizer"]


def load_encoder(path: str | Path):
    """The model with the head its config names (ForMaskedLM, ForSequenceClassification) or none."""
    return load_model(path, "auto")


def load_classifier(path: str | Path, task, what: str = "model", new_head_ok: bool = False):
    """A sequence classifier for GLUE `task` with the task's labels (num_labels 1 for regression).

    A model without a classification head (e.g. a pre-trained encoder) gets a new one when
    `new_head_ok`; a fine-tuned classifier must already have the task's label count and order.
    """
    from ..data.glue import check_label_mapping

    config = load_config(path)
    if infer_head(config) == "sequence_classification":
        check_label_mapping(task, config)
        return load_model(path, "sequence_classification", config=config)
    if not new_head_ok:
        arch = (getattr(config, "architectures", None) or ["no architecture"])[0]
        raise TensorslimError(
            f"{what} {path} ({arch}) has no classification head",
            f"fine-tune it on {task.name} first: tensorslim finetune --model {path} --task {task.name}",
        )
    labels = list(task.labels) if task.labels else ["score"]
    config.num_labels = task.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    return load_model(path, "sequence_classification", config=config)


def position_limit(config) -> int | None:
    """The longest sequence the model's position embeddings hold (None: no limit stated)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # RoBERTa's positions start after the padding index
    return limit


def check_max_length(length: int, config, flag: str = "--max-seq-length") -> int:
    """`length` if the model's position embeddings can hold it, else a TensorslimError."""
    limit = position_limit(config)
    if length < 1 or (limit and length > limit):
        raise TensorslimError(
            f"{flag} {length} is out of range for this model (1 to {limit} tokens)",
            f"pass {flag} between 1 and {limit}",
        )
    return length


def check_trained_task(path: str | Path, task, what: str = "model") -> None:
    """Refuse a model whose tensorslim training record names another task than `task`."""
    import json

    from .run_dir import INFO_FILE

    record = Path(path) / INFO_FILE
    try:
        trained = json.loads(record.read_text(encoding="utf-8")).get("task") if record.is_file() else None
    except (OSError, ValueError, AttributeError):
        trained = None
    if trained and trained != task.name:
        raise TensorslimError(
            f"{what} {path} was trained on {trained}, not on {task.name}",
            f"pass --task {trained}, or a {what} fine-tuned on {task.name}",
        )


def load_tokenizer(*paths: str | Path):
    """The tokenizer saved in the first of `paths` that has one."""
    for path in paths:
        if path is not None and any(
            (Path(path) / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
        ):
            return AutoTokenizer.from_pretrained(path)
    raise TensorslimError(
        f"no tokenizer files in {', '.join(str(p) for p in paths if p)}",
        "save the tokenizer with the model (tokenizer.save_pretrained(DIR))",
    )
