"""Loading models and tokenizers for training: any BERT-family directory or a decomposed student."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from ..errors import TensorslimError

log = logging.getLogger(__name__)


def register_student_classes() -> None:
    """Import tensorslim.modeling so that "decomposed_bert" loads with the Auto classes."""
    try:
        import tensorslim.modeling  # noqa: F401
    except ImportError as exc:  # the student model package is optional for plain-BERT runs
        log.debug("tensorslim.modeling not importable (%s); only transformers models load", exc)


def _check_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TensorslimError(f"{what} {path} is not a model directory (no config.json)",
                              "pass a directory written by save_pretrained or by a tensorslim command")
    return path


def load_config(path: str | Path, what: str = "model"):
    register_student_classes()
    return AutoConfig.from_pretrained(_check_dir(path, what))


def load_encoder(path: str | Path, what: str = "model"):
    """The model with the head its config names (ForMaskedLM, ForSequenceClassification) or none."""
    config = load_config(path, what)
    arch = (getattr(config, "architectures", None) or [""])[0]
    auto = (AutoModelForMaskedLM if arch.endswith("ForMaskedLM")
            else AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModel)
    return auto.from_pretrained(path, config=config)


def load_classifier(path: str | Path, task, what: str = "model", new_head_ok: bool = False):
    """A sequence classifier for GLUE `task` with the task's labels (num_labels 1 for regression).

    A model without a classification head (e.g. a pre-trained encoder) gets a new one when
    `new_head_ok`; a fine-tuned classifier must already have the task's label count and order.
    """
    from ..data.glue import check_label_mapping

    config = load_config(path, what)
    arch = (getattr(config, "architectures", None) or [""])[0]
    has_head = arch.endswith("ForSequenceClassification")
    if has_head:
        check_label_mapping(task, config)
        return AutoModelForSequenceClassification.from_pretrained(path, config=config)
    if not new_head_ok:
        raise TensorslimError(f"{what} {path} ({arch or 'no architecture'}) has no classification head",
                              f"fine-tune it on {task.name} first: tensorslim finetune --model {path} --task {task.name}")
    labels = list(task.labels) if task.labels else ["score"]
    config.num_labels = task.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


def load_tokenizer(*paths: str | Path):
    """The tokenizer saved in the first of `paths` that has one."""
    for path in paths:
        if path is not None and any((Path(path) / name).is_file()
                                    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(path)
    raise TensorslimError(f"no tokenizer files in {', '.join(str(p) for p in paths if p)}",
                          "save the tokenizer with the model (tokenizer.save_pretrained(DIR))")
