"""Loading teachers and students: config checks, the head a model has, verified weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from ..data.gguf import conversion_fix, gguf_in
from ..errors import TensorslimError
from ..families import get_family
from .section import int8_entry

log = logging.getLogger(__name__)

HEADS = {
    "base": AutoModel,
    "sequence_classification": AutoModelForSequenceClassification,
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
}


def load_config(path: str | Path):
    """The model's config, with clear errors for a missing directory, config or unsupported family
    (and for a GGUF file, with the command that converts it)."""
    path = Path(path)
    gguf = gguf_in(path)
    if gguf is not None:
        raise TensorslimError(
            f"{gguf} is a GGUF file (llama.cpp's format); tensorslim reads transformers model directories",
            conversion_fix(gguf),
        )
    if not path.is_dir():
        raise TensorslimError(
            f"model directory {path} {'is a file' if path.exists() else 'does not exist'}",
            "pass the directory written by save_pretrained",
        )
    if not (path / "config.json").is_file():
        raise TensorslimError(
            f"{path} has no config.json, so it is not a transformers model directory",
            "pass the directory written by save_pretrained (config.json + model.safetensors)",
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise TensorslimError(f"cannot read {path / 'config.json'}: {exc}", "fix or regenerate config.json") from exc
    get_family(config)
    return config


def infer_head(config, model: PreTrainedModel | None = None) -> str:
    """The head a model has: from its class, or the `architectures` it was saved with."""
    arch = type(model).__name__ if model is not None else " ".join(getattr(config, "architectures", None) or [])
    if "SequenceClassification" in arch:
        return "sequence_classification"
    if "MaskedLM" in arch or "PreTraining" in arch:
        return "masked_lm"
    if "CausalLM" in arch or "LMHead" in arch:
        return "causal_lm"
    return "base"


def check_head(head: str) -> str:
    if head not in HEADS:
        raise TensorslimError(f"unknown head {head!r}", f"use one of auto, {', '.join(HEADS)}")
    return head


def load_model(path: str | Path, head: str = "auto", **kwargs) -> PreTrainedModel:
    """Load a teacher or student directory with the Auto class of `head`, verifying its weights:
    every weight of the base model (all but a new head and pooler) must come from the file. An int8
    directory (`compress.int8`) loads as the int8 model it holds (on the CPU; `kwargs` unused).
    Keyword arguments that name config attributes (e.g. `num_labels`) update the config."""
    config = kwargs.pop("config", None) or load_config(path)
    for name in [k for k in kwargs if hasattr(config, k)]:
        setattr(config, name, kwargs.pop(name))
    if int8_entry(config) is not None:  # `tensorslim export --format int8` wrote it
        from .int8 import load_int8

        return load_int8(path, head, config)
    head = check_head(infer_head(config) if head == "auto" else head)
    try:
        model, info = HEADS[head].from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise TensorslimError(
            f"cannot load the weights in {path}: {exc}",
            "the weights file is missing, truncated or does not match config.json; re-save the model",
        ) from exc
    prefix = model.base_model_prefix
    own = model.base_model is model
    missing = sorted(k for k in info["missing_keys"] if (own or k.startswith(prefix + ".")) and "pooler." not in k)
    if missing:
        raise TensorslimError(
            f"{path} does not hold the weights its config.json describes "
            f"(missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})",
            "the weights file and config.json come from different models; re-save the model",
        )
    return model


def save_tokenizer(source: str | Path, out: str | Path) -> bool:
    """Copy the tokenizer of model directory `source` into `out`, if it has one."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("no tokenizer copied from %s (%s); pass --tokenizer to later commands", source, exc)
        return False
    tokenizer.save_pretrained(out)
    return True


def load_tokenizer(source: str | Path):
    """The tokenizer saved in model directory `source`."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise TensorslimError(
            f"{source} has no tokenizer ({exc})", "save the teacher's tokenizer into its directory"
        ) from None
