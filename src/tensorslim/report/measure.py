"""Parameters by part and FLOPs per token of a teacher or a student (speed: report/timing.py)."""

from __future__ import annotations

from transformers import PreTrainedModel

PARTS = ("embeddings", "encoder_factors", "encoder_dense", "pooler", "head")


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Parameters of each part (shared tensors once); 'encoder' = factors + dense encoder weights."""
    parts = dict.fromkeys(PARTS, 0)
    prefix = model.base_model_prefix + "."
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        name = name.removeprefix(prefix)
        if name.startswith("embeddings."):
            parts["embeddings"] += p.numel()
        elif name.startswith("encoder.factors."):
            parts["encoder_factors"] += p.numel()
        elif name.startswith("encoder."):
            parts["encoder_dense"] += p.numel()
        elif name.startswith("pooler."):
            parts["pooler"] += p.numel()
        else:
            parts["head"] += p.numel()
    parts["encoder"] = parts["encoder_factors"] + parts["encoder_dense"]
    parts["total"] = sum(parts[k] for k in PARTS)
    return parts


def encoder_matrix_weights(model: PreTrainedModel) -> int:
    """Weights of the encoder's projection matrices (factors for a student, D x D blocks for BERT)."""
    if hasattr(model.base_model.encoder, "factors"):
        return count_parameters(model)["encoder_factors"] + sum(
            getattr(layer, g).weight.numel() for layer in model.base_model.encoder.layer
            for g in ("qkv", "o", "ffn_in", "ffn_out") if hasattr(getattr(layer, g), "weight"))
    c = model.config
    return c.num_hidden_layers * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)


def flops_per_token(model: PreTrainedModel, seq_len: int) -> int:
    """Forward FLOPs per token of the encoder (2 x multiply-adds of projections and attention)."""
    if hasattr(model, "flops_per_token"):
        return model.flops_per_token(seq_len)
    c = model.config
    per_layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size + 2 * seq_len * c.hidden_size
    return 2 * c.num_hidden_layers * per_layer
