"""Features a distillation loss reads from a model, and the frozen teacher.

`forward_features` runs any supported model (teacher or student: they are the same classes) and
returns `Features`: hidden states from the model's own `output_hidden_states` (L + 1 tensors of
(B, T, D), embeddings first), pre-softmax attention scores of the layers asked for ((B, H, T, T)
= Q K^T * scaling after rotary embeddings, keys repeated to the query heads, no mask added; taken
by `distill.attention`), and logits.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TensorslimError
from ..families import get_family, layers_of
from .attention import capture_scores


@dataclass
class Features:
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: list[torch.Tensor | None] | None = None
    logits: torch.Tensor | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def num_layers(model: nn.Module) -> int:
    """Transformer layers of a supported model."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if config is None:
        raise TensorslimError(f"{type(model).__name__} is not a transformers model", "pass a PreTrainedModel")
    return len(layers_of(model.base_model, get_family(config)))


def is_causal(model: nn.Module) -> bool:
    """Whether the model attends causally (the score loss then ignores future keys)."""
    return get_family(_unwrap(model).config).causal


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def forward_features(model: nn.Module, inputs: dict, needs: frozenset[str], score_layers: list[int]) -> Features:
    """Run `model` on `inputs` (input_ids, attention_mask, token_type_ids) exposing what `needs` names."""
    kwargs = {name: inputs[name] for name in MODEL_INPUTS if name in inputs}
    if "token_type_ids" in kwargs and not _accepts_token_types(model):
        kwargs.pop("token_type_ids")
    if "hidden_states" in needs:
        kwargs["output_hidden_states"] = True
    want_scores = "attention_scores" in needs
    with capture_scores(_unwrap(model)) if want_scores else contextlib.nullcontext() as captured:
        out = model(**kwargs)
    scores = None
    if want_scores:
        wanted = set(score_layers)
        scores = [s if i in wanted else None for i, s in enumerate(captured)]
    return Features(
        hidden_states=getattr(out, "hidden_states", None) if "hidden_states" in needs else None,
        attention_scores=scores,
        logits=getattr(out, "logits", None),
    )


def _accepts_token_types(model: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(_unwrap(model).forward).parameters


def freeze(teacher: nn.Module, device: torch.device | str) -> nn.Module:
    """Put the teacher in eval mode, without gradients, on `device` (it is never wrapped in DDP)."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device)
