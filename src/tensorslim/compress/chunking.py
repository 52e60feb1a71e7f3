"""CPU inference of an encoder student on groups of whole sequences.

A student's projections are many smaller products; on a CPU a whole batch's FFN activations
(tokens x FFN width) are large enough that the allocator maps fresh zeroed pages for them on every
call and they fall out of cache between products. Running the base model on groups of at most
`inference_chunk_tokens` tokens (whole sequences; at least one) gives the same outputs while they
stay small (measurements: docs/results.md). Only encoders, only on the CPU without gradients:
training, GPUs and decoders (whose KV cache is per batch) always run the whole batch, and so does a
graph being captured (`torch.compile`, exports: the group count depends on the input's shape).
"""

from __future__ import annotations

import contextlib
import types
from contextvars import ContextVar

import torch
from torch import nn

from .factored import tracing

ATTR = "_tensorslim_chunk_tokens"
_off: ContextVar[bool] = ContextVar("tensorslim_chunking_off", default=False)


@contextlib.contextmanager
def whole_batches():
    """Run every forward inside on the whole batch (for code that records per-layer outputs in call order)."""
    token = _off.set(True)
    try:
        yield
    finally:
        _off.reset(token)


def _take(value, start: int, stop: int, batch: int):
    """`value` with every batch-major tensor (first dim == batch) cut to rows start:stop."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, start, stop, batch) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, start, stop, batch) for k, v in value.items()}
    return value


def _join(parts: list, batch: int):
    """Concatenate the per-group outputs (tensors, tuples, ModelOutputs) along the batch."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if sum(p.shape[0] for p in parts) == batch else first
    if isinstance(first, dict):  # ModelOutput is an OrderedDict
        return type(first)(**{k: _join([p[k] for p in parts], batch) for k in first.keys()})
    if isinstance(first, (tuple, list)):
        return type(first)(_join([p[i] for p in parts], batch) for i in range(len(first)))
    return first


def _chunked_forward(self: nn.Module, *args, **kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    forward = type(self).forward
    if (
        tracing()
        or ids is None
        or ids.dim() < 2
        or ids.device.type != "cpu"
        or torch.is_grad_enabled()
        or self.training
        or _off.get()
    ):
        return forward(self, *args, **kwargs)
    batch, length = ids.shape[:2]
    per = max(1, getattr(self, ATTR) // length)
    if per >= batch:
        return forward(self, *args, **kwargs)
    parts = [
        forward(self, *_take(args, i, i + per, batch), **_take(kwargs, i, i + per, batch)) for i in range(0, batch, per)
    ]
    return _join(parts, batch)


def enable(base_model: nn.Module, chunk_tokens: int) -> None:
    """Run `base_model` on groups of at most `chunk_tokens` tokens in CPU inference (0: never)."""
    if chunk_tokens > 0:
        setattr(base_model, ATTR, chunk_tokens)
        base_model.forward = types.MethodType(_chunked_forward, base_model)


def disable(base_model: nn.Module) -> None:
    if hasattr(base_model, ATTR):
        delattr(base_model, ATTR)
        base_model.__dict__.pop("forward", None)
