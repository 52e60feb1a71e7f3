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


def flops_per_token(model: PreTrainedModel, seq_len: int) -> int:
    """Forward FLOPs (2 x multiply-adds) per token of the layers' projections and attention
    (QK^T and the weighted sum over `seq_len` keys); x A shared by projections of one input once."""
    macs, shared = 0, set()
    for key, module, proj in targets(model, "all"):
        layer = key.split(".", 1)[0]
        if isinstance(module, FactoredProjection):
            macs += module.macs_per_token()
            bank = module.bank
            if bank.method.shared and not module.fan_in and proj.reads:
                tag = (layer, proj.reads, module.layout.group, module.layout.transposed)
                if tag in shared:  # x A computed once for all the projections of this input
                    macs -= module.block_in * bank.sides(module.layout.group, module.layout.transposed)[0].shape[-1]
                shared.add(tag)
        elif isinstance(module, nn.Module):
            fan_in, fan_out = in_out(module)
            macs += fan_in * fan_out
    layers = len({key.split(".", 1)[0] for key, _, _ in targets(model, "all")})
    macs += layers * 2 * seq_len * model.config.hidden_size
    return 2 * macs
