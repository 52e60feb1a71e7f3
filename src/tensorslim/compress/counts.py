"""What a model holds and computes: parameters by part, the weights of the projection matrices the
paper counts, and forward FLOPs per token, for dense models and students alike."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from ..families import get_family
from .factored import FactoredProjection
from .inplace import BANK, in_out, targets

PARTS = ("embeddings", "encoder_factors", "encoder_dense", "other", "pooler", "head")


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Parameters per part (shared tensors once). "encoder" is the layer stack (encoder or decoder
    layers): the factors plus the dense weights in the layers; "other" is the rest of the base model
    (final norm, embedding projection)."""
    family = get_family(model.config)
    base = model.base_model
    base_ids = {id(p) for p in base.parameters()}
    parts = dict.fromkeys(PARTS, 0)
    seen = set()
    for name, p in base.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        first = name.split(".", 1)[0]
        if name.startswith(BANK + "."):
            parts["encoder_factors"] += p.numel()
        elif name.startswith(family.layers + "."):
            parts["encoder_dense"] += p.numel()
        elif first == "pooler":
            parts["pooler"] += p.numel()
        elif "embed" in first or first in ("wte", "wpe"):
            parts["embeddings"] += p.numel()
        else:
            parts["other"] += p.numel()
    for p in model.parameters():
        if id(p) not in base_ids and id(p) not in seen:
            seen.add(id(p))
            parts["head"] += p.numel()
    parts["encoder"] = parts["encoder_factors"] + parts["encoder_dense"]
    parts["total"] = sum(parts[k] for k in PARTS)
    return parts


def matrix_weights(model: PreTrainedModel) -> int:
    """Weights of the layers' projection matrices as the paper counts them: the factors of a
    student plus any projection it left dense; all projection weights of a dense model."""
    bank = getattr(model.base_model, BANK, None)
    total = sum(p.numel() for p in bank.parameters()) if bank is not None else 0
    for _, module, _ in targets(model, "all"):
        if not isinstance(module, FactoredProjection):
            total += module.weight.numel()
    return total


def input_sets(model: PreTrainedModel) -> list[list[tuple[str, nn.Module]]]:
    """The layers' projections as (key, module) lists that compute one x A together: the factored
    modules of a layer that read the same input with the same shared basis (q, k and v; gate and up
    of one group and orientation); every other projection alone."""
    sets: dict = {}
    for key, module, proj in targets(model, "all"):
        tag = key
        if isinstance(module, FactoredProjection) and module.shareable_macs() and proj.reads:
            tag = (key.split(".", 1)[0], proj.reads, module.layout.group, module.layout.transposed)
        sets.setdefault(tag, []).append((key, module))
    return list(sets.values())


def projection_macs(modules: list[nn.Module]) -> int:
    """Multiply-adds per token of one input set (see input_sets) as the forward computes them."""
    macs = 0
    for module in modules:
        if isinstance(module, FactoredProjection):
            macs += module.macs_per_token()
        else:
            fan_in, fan_out = in_out(module)
            macs += fan_in * fan_out
    shared = [m.shareable_macs() for m in modules if isinstance(m, FactoredProjection)]
    return macs - sum(shared[1:])  # x A once for the set


def dense_is_faster(model: PreTrainedModel) -> list[str]:
    """Keys of the factored projections whose dense matrices take no more multiply-adds per token
    (at batch 1: no more weights read) than their factored forward. An input set goes dense as a
    whole: once its x A is paid, each module's factored product is the cheaper one exactly when the
    set's is."""
    keys = []
    for members in input_sets(model):
        modules = [m for _, m in members]
        if not all(isinstance(m, FactoredProjection) for m in modules):
            continue
        if sum(m.in_features * m.out_features for m in modules) <= projection_macs(modules):
            keys += [key for key, _ in members]
    return keys


def flops_per_token(model: PreTrainedModel, seq_len: int) -> int:
    """Forward FLOPs (2 x multiply-adds) per token of the layers' projections and attention
    (QK^T and the weighted sum over `seq_len` keys); x A shared by projections of one input once."""
    macs = sum(projection_macs([m for _, m in members]) for members in input_sets(model))
    layers = len({key.split(".", 1)[0] for key, _, _ in targets(model, "all")})
    macs += layers * 2 * seq_len * model.config.hidden_size
    return 2 * macs
