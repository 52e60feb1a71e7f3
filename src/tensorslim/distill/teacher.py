"""Features a distillation loss reads from a model, and the frozen teacher.

`forward_features` runs any BERT-family Hugging Face model and returns `Features`: hidden states
(L+1 tensors of (B, T, D), embeddings first), pre-softmax attention scores (L entries of
(B, H, T, T) = Q K^T / sqrt(d_head) with no mask added; `None` for layers not asked for) and logits.
A decomposed model ("decomposed_bert") returns the scores natively; for any other model they are
computed from forward hooks on each layer's query and key projections, so any attention
implementation (eager, sdpa) works.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TensorslimError

#: (query, key) projection module names of the supported families: BERT/RoBERTa/ELECTRA/XLM-R, DistilBERT.
QK_NAMES = [("query", "key"), ("q_lin", "k_lin")]


@dataclass
class Features:
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: list[torch.Tensor | None] | None = None
    logits: torch.Tensor | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def has_native_scores(model: nn.Module) -> bool:
    return getattr(_unwrap(model).config, "model_type", None) == "decomposed_bert"


def query_key_modules(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """Per encoder layer, in order, the (query, key) projection modules."""
    modules = dict(_unwrap(model).named_modules())
    for q_name, k_name in QK_NAMES:
        pairs = []
        for name, module in modules.items():
            if name.endswith("." + q_name) and isinstance(module, nn.Linear):
                key = modules.get(name[: -len(q_name)] + k_name)
                if isinstance(key, nn.Linear):
                    pairs.append((module, key))
        if pairs:
            return pairs
    raise TensorslimError(
        f"cannot find attention query/key projections in {type(_unwrap(model)).__name__}",
        "use a BERT-family model (BERT, RoBERTa, ELECTRA, DistilBERT) or a tensorslim decomposed model",
    )


def num_heads(model: nn.Module) -> int:
    config = _unwrap(model).config
    for name in ("num_attention_heads", "n_heads"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise TensorslimError(f"{type(config).__name__} names no attention head count", "use a BERT-family model")


def num_layers(model: nn.Module) -> int:
    config = _unwrap(model).config
    for name in ("num_hidden_layers", "n_layers"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise TensorslimError(f"{type(config).__name__} names no layer count", "use a BERT-family model")


@contextlib.contextmanager
def capture_scores(model: nn.Module, layers: list[int]):
    """Yield a list that, after a forward pass, holds (B, H, T, T) pre-softmax scores at `layers`."""
    pairs = query_key_modules(model)
    heads = num_heads(model)
    scores: list[torch.Tensor | None] = [None] * len(pairs)
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(layer: int, which: str):
        def fn(_module, _inputs, output):
            outputs[layer, which] = output
            if (layer, "q") in outputs and (layer, "k") in outputs:
                q, k = outputs.pop((layer, "q")), outputs.pop((layer, "k"))
                b, t, d = q.shape
                q = q.view(b, t, heads, d // heads).transpose(1, 2)
                k = k.view(b, t, heads, d // heads).transpose(1, 2)
                scores[layer] = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        return fn

    try:
        for layer in sorted(set(layers)):
            q, k = pairs[layer]
            handles += [q.register_forward_hook(hook(layer, "q")), k.register_forward_hook(hook(layer, "k"))]
        yield scores
    finally:
        for handle in handles:
            handle.remove()


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def forward_features(model: nn.Module, inputs: dict, needs: frozenset[str], score_layers: list[int]) -> Features:
    """Run `model` on `inputs` (input_ids, attention_mask, token_type_ids) exposing what `needs` names."""
    kwargs = {name: inputs[name] for name in MODEL_INPUTS if name in inputs}
    if "hidden_states" in needs:
        kwargs["output_hidden_states"] = True
    native = has_native_scores(model)
    want_scores = "attention_scores" in needs
    if want_scores and native:
        kwargs["output_attention_scores"] = True
    with capture_scores(model, score_layers) if want_scores and not native else contextlib.nullcontext() as hooked:
        out = model(**kwargs)
    scores = None
    if want_scores:
        scores = list(out.attention_scores) if native else hooked
    return Features(
        hidden_states=getattr(out, "hidden_states", None) if "hidden_states" in needs else None,
        attention_scores=scores,
        logits=getattr(out, "logits", None),
    )


def freeze(teacher: nn.Module, device: torch.device | str) -> nn.Module:
    """Put the teacher in eval mode, without gradients, on `device` (it is never wrapped in DDP)."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device)
