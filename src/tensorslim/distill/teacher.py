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

from ..compress.loading import infer_head
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


def freeze(teacher: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """Put the teacher in eval mode, without gradients, on `device` (and in `dtype` when given; it is
    never wrapped in DDP or FSDP)."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device=device, dtype=dtype)


def _kind(config) -> str:
    return "a causal LM" if get_family(config).causal else "an encoder"


def check_pair(teacher_config, student_config, needs: frozenset[str]) -> None:
    """Refuse, from their configs, a teacher and student whose features an objective reading `needs`
    cannot compare: one causal and one not, logits from a model without a head or over different
    vocabularies, hidden states or attention scores of different widths."""
    fix = "distill a student decomposed from this teacher (tensorslim decompose --teacher TEACHER)"
    if get_family(teacher_config).causal != get_family(student_config).causal:
        raise TensorslimError(
            f"the teacher ({teacher_config.model_type}) is {_kind(teacher_config)} but the student "
            f"({student_config.model_type}) is {_kind(student_config)}",
            fix,
        )
    if "logits" in needs:
        for what, config in (("teacher", teacher_config), ("student", student_config)):
            if infer_head(config) == "base":
                raise TensorslimError(
                    f"the objective compares logits but the {what} ({config.model_type}) has no head",
                    "use a model saved with its LM or classification head, or drop the logits terms",
                )
        heads = {infer_head(teacher_config), infer_head(student_config)}
        if heads <= {"causal_lm", "masked_lm"} and teacher_config.vocab_size != student_config.vocab_size:
            raise TensorslimError(
                f"the teacher's vocabulary has {teacher_config.vocab_size} tokens, the student's "
                f"{student_config.vocab_size}: their next-token distributions cannot be compared",
                fix,
            )
    widths = {"hidden_states": ("hidden_size",), "attention_scores": ("hidden_size", "num_attention_heads")}
    for feature in needs & set(widths):
        for name in widths[feature]:
            t, s = getattr(teacher_config, name, None), getattr(student_config, name, None)
            if t != s:
                raise TensorslimError(
                    f"the objective compares {feature.replace('_', ' ')} but the teacher has {name} {t} "
                    f"and the student {s}",
                    fix + ", or drop the hidden/attention terms",
                )
