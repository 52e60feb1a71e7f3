"""Pre-softmax attention scores of any supported model, taken where the model computes attention.

Every family's attention module hands (query, key, value, mask) to transformers' attention
interface (`ALL_ATTENTION_FUNCTIONS`), after rotary embeddings and with keys of grouped-query
attention not yet repeated; fused projections (GPT-2's c_attn) are already split there. While
`capture_scores` is active, the model's attention implementation is swapped for a registered
wrapper that records Q K^T * scaling (keys repeated to the query heads; no mask added) and then
runs the original implementation (sdpa, or the model's own eager function) with the mask that
implementation expects, so outputs are unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
from contextvars import ContextVar

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from ..compress.chunking import whole_batches

PREFIX = "tensorslim_capture_"
_active: ContextVar[list | None] = ContextVar("tensorslim_scores", default=None)


def _delegate(name: str, module: nn.Module):
    if name == "eager":
        return importlib.import_module(type(module).__module__).eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _recording(delegate: str):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scores = _active.get()
        if scores is not None:
            k = key if key.shape[1] == query.shape[1] else key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            scores.append((query @ k.transpose(-1, -2)) * scale)  # (B, H, T, S)
        return _delegate(delegate, module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )

    return attention


for _impl in ("sdpa", "eager"):
    ALL_ATTENTION_FUNCTIONS.register(PREFIX + _impl, _recording(_impl))
    ALL_MASK_ATTENTION_FUNCTIONS.register(PREFIX + _impl, ALL_MASK_ATTENTION_FUNCTIONS[_impl])


def _configs(model: nn.Module):
    seen = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(module, PreTrainedModel) and id(config) not in seen:
            seen[id(config)] = config
    return list(seen.values())


@contextlib.contextmanager
def capture_scores(model: nn.Module):
    """Yield a list that, after a forward pass of `model`, holds each attention call's (B, H, T, S)
    pre-softmax scores in call order (one per layer for self-attention models)."""
    scores: list[torch.Tensor] = []
    configs = _configs(model)
    previous = [c._attn_implementation for c in configs]
    for config, impl in zip(configs, previous):
        base = impl if impl in ("sdpa", "eager") else "sdpa"
        config._attn_implementation = PREFIX + base
    token = _active.set(scores)
    try:
        with whole_batches():  # one recorded call per layer, in layer order
            yield scores
    finally:
        _active.reset(token)
        for config, impl in zip(configs, previous):
            config._attn_implementation = impl
