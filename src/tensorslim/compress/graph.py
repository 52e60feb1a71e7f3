"""A model as a graph of named tensors: what an ONNX export takes and returns, the inputs it is traced
and checked with, and the comparison of two graphs.

Inputs: `input_ids`, `attention_mask` and, where the model reads them, `token_type_ids` (encoders) or
`position_ids` (decoders), all int64 (batch, sequence). A decoder's causal-LM and base models also
take the KV cache of earlier tokens, `past.<i>.key` / `past.<i>.value` (batch, key/value heads, past
sequence, head dim), and return `present.<i>.key` / `.value` after their outputs; their
`attention_mask` spans past and new tokens (batch, past sequence + sequence). One graph so serves the
prompt (past sequence 0) and every later step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from ..errors import TensorslimError
from ..families import get_family
from .loading import infer_head

#: (batch, sequence, past sequence) of the example an export is traced with (past only with a
#: cache): no 0 or 1, which torch.export would specialise on, and no two equal sizes
TRACE_SHAPE = (2, 5, 3)
#: (batch, sequence, past sequence) of the checks after an export: one and several sequences, a
#: prompt without a cache and single-token steps with one
CHECK_SHAPES = ((1, 7, 0), (3, 23, 0), (3, 2, 9), (2, 1, 5))


@dataclass(frozen=True)
class Signature:
    """The graph's inputs (model keyword arguments, in order), outputs (fields of the model's output)
    and the number of KV-cache layers it passes through (0: no cache)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cache_layers: int = 0

    def input_names(self) -> list[str]:
        return [*self.inputs, *self._cache_names("past")]

    def output_names(self) -> list[str]:
        return [*self.outputs, *self._cache_names("present")]

    def _cache_names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{part}" for i in range(self.cache_layers) for part in ("key", "value")]


class Graph(nn.Module):
    """`model` with positional tensors in (the signature's inputs, then the past keys and values) and
    a tuple of tensors out (its outputs, then the present keys and values)."""

    def __init__(self, model: PreTrainedModel, signature: Signature):
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sig = self.signature
        kwargs = dict(zip(sig.inputs, tensors))
        if sig.cache_layers:
            past = tensors[len(sig.inputs) :]
            layers = [(past[2 * i], past[2 * i + 1]) for i in range(sig.cache_layers)]
            kwargs.update(cache=DynamicCache(layers, config=self.model.config), use_cache=True)
        out = self.model(**kwargs)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)] if sig.cache_layers else []
        return (*(out[name] for name in sig.outputs), *present)


def uses_cache(model: PreTrainedModel) -> bool:
    """Whether the graph passes a KV cache: causal-LM and base models of decoder families."""
    return get_family(model.config).causal and infer_head(model.config, model) in ("causal_lm", "base")


def signature(model: PreTrainedModel, tokenizer_inputs: list[str] | None = None) -> Signature:
    """The graph of `model`: the inputs its forward takes (token types only where the tokenizer makes
    them, when `tokenizer_inputs` is known), the tensor fields of its output on an example, and its
    cache layers."""
    accepted = inspect.signature(type(model).forward).parameters  # the class's: chunking wraps the instance's
    cache = uses_cache(model)
    optional = "position_ids" if cache else "token_type_ids"
    inputs = ["input_ids", "attention_mask"]
    if optional in accepted and (cache or tokenizer_inputs is None or optional in tokenizer_inputs):
        inputs.append(optional)
    probe = Signature(tuple(inputs), ())
    example = dict(zip(inputs, example_inputs(model, probe, *TRACE_SHAPE[:2], past=0)))
    try:
        with torch.no_grad():
            out = model(**example, **({"use_cache": True} if cache else {}))
    except (ValueError, RuntimeError, IndexError) as exc:
        raise TensorslimError(
            f"the {type(model).__name__} fails on an example batch of {TRACE_SHAPE[0]} sequences: {exc}",
            "fix the model's config (e.g. a classifier of a decoder needs pad_token_id) and export again",
        ) from exc
    outputs = tuple(name for name, value in out.items() if isinstance(value, torch.Tensor))
    layers = len(out.cache.layers) if cache else 0
    return Signature(tuple(inputs), outputs, layers)


def example_inputs(model: PreTrainedModel, sig: Signature, batch: int, length: int, past: int, seed: int = 0):
    """Random tensors for the graph's inputs: `length` new tokens after `past` cached ones (the cache
    computed by the model from random earlier tokens; `past` must be 0 without a cache); encoders'
    first sequence right-padded."""
    if past and not sig.cache_layers:
        raise ValueError("a past sequence needs a graph with a KV cache")
    config = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, past + length, dtype=torch.long)
    if not sig.cache_layers and batch > 1:
        mask[0, length - length // 3 :] = 0
    values = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in sig.inputs:
        types = torch.zeros_like(ids)
        types[:, length // 2 :] = int(getattr(config, "type_vocab_size", 1) > 1)
        values["token_type_ids"] = types
    if "position_ids" in sig.inputs:
        values["position_ids"] = torch.arange(past, past + length).expand(batch, length)
    tensors = [values[name] for name in sig.inputs]
    if sig.cache_layers:
        tensors += past_cache(model, batch, past, g)
    return tuple(tensors)


@torch.no_grad()
def past_cache(model: PreTrainedModel, batch: int, past: int, g: torch.Generator) -> list[torch.Tensor]:
    """Keys and values (per layer, key first) of `past` random tokens; empty ones for `past` 0."""
    ids = torch.randint(0, model.config.vocab_size, (batch, max(past, 1)), generator=g)
    cache = model(input_ids=ids, use_cache=True).cache
    return [t[:, :, :past] for layer in cache.layers for t in (layer.keys, layer.values)]


def dynamic_shapes(sig: Signature) -> tuple:
    """torch.export's dynamic shapes of `Graph.forward(*tensors)`: batch and sequence axes of every
    input; with a cache, the past sequence and the mask's past + new sequence."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    specs = {name: {0: batch, 1: seq} for name in sig.inputs}
    if sig.cache_layers:
        past = torch.export.Dim("past_sequence")
        specs["attention_mask"] = {0: batch, 1: torch.export.Dim("total_sequence")}
        specs.update({name: {0: batch, 2: past} for name in sig.input_names()[len(sig.inputs) :]})
    return (tuple(specs[name] for name in sig.input_names()),)


def max_abs_difference(names: list[str], ours, theirs) -> tuple[float, str]:
    """The largest absolute difference between two sequences of outputs called `names`, and the output
    it is in (a NaN counts as infinitely different)."""
    worst, where = 0.0, names[0]
    for name, a, b in zip(names, ours, theirs):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        if a.shape != b.shape:
            return float("inf"), f"{name} (shape {tuple(a.shape)} against {tuple(b.shape)})"
        diff = (a - b).abs().nan_to_num(nan=float("inf")).max().item() if a.numel() else 0.0
        if diff > worst:
            worst, where = diff, name
    return worst, where


def cosines(names: list[str], ours, theirs) -> dict[str, torch.Tensor]:
    """Per output of two sequences of outputs called `names`, the cosine similarity of each pair of
    matching vectors along the last axis (a token's hidden state or logits, a sequence's logits, a
    head's key); two zero vectors count as equal, a NaN or a shape mismatch as opposite."""
    found = {}
    for name, a, b in zip(names, ours, theirs):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        if a.shape != b.shape:
            found[name] = torch.tensor([-1.0], dtype=torch.float64)
        elif a.numel():
            a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            zero = (a.norm(dim=-1) == 0) & (b.norm(dim=-1) == 0)
            found[name] = torch.nn.functional.cosine_similarity(a, b, dim=-1).nan_to_num(nan=-1.0).masked_fill(zero, 1)
    return found
