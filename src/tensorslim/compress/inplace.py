"""The user's own model, changed in place (as PEFT does): each decomposed projection becomes a
`FactoredProjection` reading factors stored once in a `FactorBank` on the base model; `merge`
turns them back into the original dense modules.

Which modules are decomposed, and how their matrices become slices, comes from the model's family
(`families`) and `decomposition.slices`; what the factors are comes from the method.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..decomposition.methods import Method, get_method
from ..decomposition.slice_weights import SliceWeights
from ..decomposition.slices import Group, Matrix, ModuleLayout, assemble, plan, stack
from ..errors import TensorslimError
from ..families import Projection, get_family, get_path, layers_of, set_path
from . import chunking
from .embeddings import install as install_embeddings
from .embeddings import merge_embeddings
from .factored import FactorBank, FactoredProjection
from .section import DecompositionConfig, DecompositionLoader, section_of

log = logging.getLogger(__name__)

OPS = {"all": ("attention", "ffn"), "san": ("attention",), "ffn": ("ffn",)}
BANK = "tensorslim_factors"


def check_ops(ops: str) -> tuple[str, ...]:
    if ops not in OPS:
        raise TensorslimError(f"unknown ops {ops!r}", f"use one of {', '.join(OPS)}")
    return OPS[ops]


def targets(model: PreTrainedModel, ops: str = "all") -> list[tuple[str, nn.Module, Projection]]:
    """(key "<layer>.<path>", module, projection spec) of every module `ops` decomposes, in stacking order."""
    family = get_family(model.config)
    kinds = check_ops(ops)
    found = []
    for i, layer in enumerate(layers_of(model.base_model, family)):
        for proj in family.projections:
            if proj.kind in kinds:
                found.append((f"{i}.{proj.path}", get_path(layer, proj.path), proj))
    return found


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear, Conv1D or FactoredProjection."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def matrix_of(module: nn.Module) -> torch.Tensor:
    """The module's [in, out] weight (a view for Linear and Conv1D)."""
    if isinstance(module, FactoredProjection):
        return module.dense_weight()
    return module.weight if isinstance(module, Conv1D) else module.weight.T


def layout(
    model: PreTrainedModel, ops: str = "all", window: int | None = None, private: tuple[str, ...] = ()
) -> tuple[dict[str, Group], list[ModuleLayout], list]:
    """Slice groups and module layouts of `model` (see decomposition.slices; `window`: layers per
    group, None for all; `private`: parts grouped per layer), with the targets."""
    found = targets(model, ops)
    if not found:
        raise TensorslimError(f"ops={ops!r} selects no projection of this model", "use --ops all")
    matrices = []
    for key, module, proj in found:
        if not isinstance(module, (nn.Linear, Conv1D, FactoredProjection)):
            raise TensorslimError(
                f"{key} is a {type(module).__name__}, not a linear projection",
                "this checkpoint's modules differ from its family's table entry",
            )
        fan_in, fan_out = in_out(module)
        if fan_out % len(proj.parts):
            raise TensorslimError(
                f"{key} has {fan_out} outputs, not divisible into {proj.parts}",
                "this checkpoint's modules differ from its family's table entry",
            )
        widths = (fan_out // len(proj.parts),) * len(proj.parts)
        matrices.append(Matrix(key, fan_in, widths, proj.transposed, proj.reads or "-".join(proj.parts), proj.parts))
    num_layers = len(layers_of(model.base_model, get_family(model.config)))
    if window is not None and not 1 <= window <= num_layers:
        raise TensorslimError(
            f"layer window {window} is out of range for a model of {num_layers} layers",
            f"choose --layer-window between 1 and {num_layers}",
        )
    parts = dict.fromkeys(part for _, _, proj in found for part in proj.parts)
    unknown = set(private) - set(parts)
    if unknown:
        raise TensorslimError(
            f"--private-parts names {', '.join(sorted(unknown))}, not a part of this model's decomposed projections",
            f"choose among {', '.join(parts)}, or none",
        )
    groups, layouts = plan(matrices, model.config.hidden_size, window, private)
    return groups, layouts, found


def grouping(method: Method) -> dict:
    """`layout`'s grouping keywords from the method's options: `window`, its layer window (None for
    every layer in one group per shape: the option unset, or 0), and `private`, its private parts."""
    parts = method.values.get("private_parts") or "none"
    return {
        "window": method.values.get("layer_window") or None,
        "private": () if parts == "none" else tuple(p.strip() for p in parts.split(",") if p.strip()),
    }


def is_decomposed(model: nn.Module) -> bool:
    return hasattr(getattr(model, "base_model", model), BANK)


def bank_of(model: nn.Module) -> FactorBank:
    return getattr(model.base_model, BANK)


def _install(
    model: PreTrainedModel,
    method: Method,
    groups: dict[str, Group],
    ranks: dict[str, dict],
    layouts: list[ModuleLayout],
    found: list,
    chunk_tokens: int,
) -> FactorBank:
    """Register the bank on the base model and swap the target modules for factored ones (biases
    copied; factors left for the caller to fill)."""
    base = model.base_model
    bank = FactorBank(method, groups, ranks)
    base.add_module(BANK, bank)
    layers = layers_of(base, get_family(model.config))
    for lay, (key, module, _) in zip(layouts, found):
        bias = getattr(module, "bias", None)
        new = FactoredProjection(lay, bank, bias is not None)
        if bias is not None and bias.device.type != "meta":
            with torch.no_grad():
                new.bias.copy_(bias)
        new.to(
            device=bias.device if bias is not None else module.weight.device,
            dtype=bias.dtype if bias is not None else module.weight.dtype,
        )
        index, _, path = key.partition(".")
        set_path(layers[int(index)], path, new)
        # transformers' _init_weights of some families reaches into a projection's `.weight` from its
        # parent module (GPT-2, ModernBERT); the factors are loaded or fitted, never initialised there
        parent = get_path(layers[int(index)], path.rpartition(".")[0])
        if not any(True for _ in parent.parameters(recurse=False)):
            parent._is_hf_initialized = True
        new._is_hf_initialized = True
    bank.to(device=next(base.parameters()).device)
    base.register_forward_pre_hook(bank.begin_forward)
    base.register_forward_hook(bank.end_forward, always_call=True)
    if not get_family(model.config).causal:
        chunking.enable(base, chunk_tokens)
    return bank


def section_for(
    method: Method, groups: dict[str, Group], ranks: dict, ops: str, chunk_tokens: int
) -> DecompositionConfig:
    return DecompositionConfig(
        method=method.name,
        options={k: v for k, v in method.values.items() if v is not None},
        ops=ops,
        groups={
            n: {"rows": g.rows, "cols": g.cols, "num_slices": g.num_slices, "ranks": ranks[n]}
            for n, g in groups.items()
        },
        inference_chunk_tokens=chunk_tokens,
    )


def attach_section(model: PreTrainedModel, section: DecompositionConfig) -> None:
    """Record the section in the config (save_pretrained writes it) and the loader that merges."""
    model.config.quantization_config = section
    model.hf_quantizer = DecompositionLoader(section, pre_quantized=True)


def apply_structure(model: PreTrainedModel, section: DecompositionConfig) -> FactorBank:
    """Give `model` the factored structure `section` describes (factors uninitialised): the loading path."""
    method = get_method(section.method, **section.options)
    groups, layouts, found = layout(model, section.ops, **grouping(method))
    expected = {n: (g["rows"], g["cols"], g["num_slices"]) for n, g in section.groups.items()}
    if expected != {n: (g.rows, g.cols, g.num_slices) for n, g in groups.items()}:
        raise TensorslimError(
            "the decomposition section of config.json does not match the model's shapes",
            "the config was edited or comes from another model; re-run tensorslim decompose",
        )
    ranks = {n: dict(g["ranks"]) for n, g in section.groups.items()}
    merged = set(section.merged)
    if not merged <= {lay.key for lay in layouts}:
        raise TensorslimError(
            f"the decomposition section names merged projections this model does not have: "
            f"{', '.join(sorted(merged - {lay.key for lay in layouts}))}",
            "the config was edited or comes from another model; re-run tensorslim decompose",
        )
    kept = [i for i, lay in enumerate(layouts) if lay.key not in merged]  # merged ones stay the class's own
    live = {layouts[i].group for i in kept}
    if section.embeddings:
        install_embeddings(model, section.embeddings)
    return _install(
        model,
        method,
        {n: g for n, g in groups.items() if n in live},
        {n: r for n, r in ranks.items() if n in live},
        [layouts[i] for i in kept],
        [found[i] for i in kept],
        section.inference_chunk_tokens,
    )


def factorize(
    model: PreTrainedModel,
    method: Method,
    ops: str = "all",
    chunk_tokens: int = 1024,
    weights: dict[str, SliceWeights] | None = None,
) -> dict:
    """Decompose `model` in place with `method`; return the fit record per group.

    Each group's stack is fitted from the current dense weights (never from zeros); see
    `decomposition.slices` for the orientation. With `weights` (each group's damped input moments,
    `compress.calibration`) the fit minimises the calibrated output error instead of the weight error.
    """
    if is_decomposed(model):
        raise TensorslimError(
            "the model is already decomposed", "merge it first (model.dequantize()) or pass the teacher"
        )
    groups, layouts, found = layout(model, ops, **grouping(method))
    hidden = model.config.hidden_size
    method.validate(groups, hidden)
    ranks = {n: method.group_ranks(g, hidden) for n, g in groups.items()}
    with torch.no_grad():
        stacks = stack({key: matrix_of(module) for key, module, _ in found}, groups, layouts)
    for name, W in stacks.items():
        if not torch.isfinite(W).all():
            raise TensorslimError(
                f"the teacher's weights hold NaN or infinite values (slice group {name})",
                "the checkpoint is corrupt or training diverged; use a finite teacher",
            )
    fits = {}
    device = next(model.parameters()).device
    for name, W in stacks.items():
        if weights is None:
            factors, record = method.fit(W.to(device), groups[name], ranks[name])
        else:
            factors, record = method.fit_calibrated(W.to(device), groups[name], ranks[name], weights[name].to(device))
        fits[name] = (method.finish(groups[name], factors), record, W)
    bank = _install(model, method, groups, ranks, layouts, found, chunk_tokens)
    with torch.no_grad():
        for name, (factors, _, _) in fits.items():
            for fname, param in bank.groups[name].named_parameters():
                param.copy_(factors[fname])
    attach_section(model, section_for(method, groups, ranks, ops, chunk_tokens))
    return {
        "groups": groups,
        "ranks": ranks,
        "layouts": layouts,
        "found": found,
        "fits": {n: (rec, W) for n, (_, rec, W) in fits.items()},
    }


def dense_module(module: FactoredProjection, M: torch.Tensor, conv1d: bool) -> nn.Module:
    """The nn.Linear (or Conv1D) with [in, out] matrix `M` and the module's bias."""
    dtype = module.bias.dtype if module.bias is not None else M.dtype
    if conv1d:
        dense = Conv1D(module.out_features, module.in_features)
        dense.weight.copy_(M)
    else:
        dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        dense.weight.copy_(M.T)
    if module.bias is not None:
        dense.bias.copy_(module.bias)
    return dense.to(device=M.device, dtype=dtype)


@torch.no_grad()
def merge(model: PreTrainedModel, keys: list[str] | None = None) -> PreTrainedModel:
    """Replace FactoredProjections by the original dense modules with the reconstructed weights
    (PEFT's merge_and_unload): all of them, or those of `keys` ("<layer>.<path>").

    Once none is left (factorised word embeddings merge with the last of them) the model is an
    ordinary instance of its class (no bank, no section). Otherwise the keys are added to the
    section's `merged` (loading builds them dense), and the bank drops the groups no factored
    module reads any more."""
    if not is_decomposed(model):
        raise TensorslimError("the model is not decomposed", "pass a tensorslim student")
    bank = bank_of(model)
    layers = layers_of(model.base_model, get_family(model.config))
    factored = {key: (m, p) for key, m, p in targets(model, "all") if isinstance(m, FactoredProjection)}
    chosen = list(factored) if keys is None else [k for k in factored if k in set(keys)]
    if keys is not None and len(chosen) != len(set(keys)):
        raise TensorslimError(
            f"not factored projections of this model: {', '.join(sorted(set(keys) - set(factored)))}",
            "pass keys '<layer>.<path>' of FactoredProjection modules",
        )
    for group in dict.fromkeys(factored[k][0].layout.group for k in chosen):  # one dense stack at a time
        stacks = {group: bank.reconstruct(group)}
        for key in chosen:
            module, proj = factored[key]
            if module.layout.group == group:
                index, _, path = key.partition(".")
                set_path(layers[int(index)], path, dense_module(module, assemble(stacks, module.layout), proj.conv1d))
    remaining = [m for k, (m, _) in factored.items() if k not in chosen]
    if remaining:
        for name in set(bank.groups) - {m.layout.group for m in remaining}:
            del bank.groups[name]
        bank._memo, bank._memo_key = {}, None
        section = section_of(model.config)
        done = set(section.merged) | set(chosen)
        section.merged = [key for key, _, _ in targets(model, "all") if key in done]
        attach_section(model, section)
        return model
    section = section_of(model.config)
    if section is not None and section.embeddings:
        merge_embeddings(model, section.embeddings)
    detach_bank(model)
    return model


def detach_bank(model: PreTrainedModel) -> None:
    """Remove the bank, its hooks, chunking and the section once no projection reads the bank any
    more (after `merge`, or int8's conversion): an ordinary instance of the class."""
    base, bank = model.base_model, bank_of(model)
    for hooks in (base._forward_pre_hooks, base._forward_hooks):
        for key, hook in list(hooks.items()):
            if getattr(hook, "__self__", None) is bank:
                del hooks[key]
    delattr(base, BANK)
    chunking.disable(base)
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
