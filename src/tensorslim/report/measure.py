"""Parameters by part, FLOPs per token and measured throughput of a teacher or a student."""

from __future__ import annotations

import time

import torch
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


@torch.inference_mode()
def throughput(model: PreTrainedModel, batch_size: int = 32, seq_len: int = 128, seconds: float = 3.0,
               warmup: int = 2, device: str | torch.device = "cpu") -> dict[str, float]:
    """Sequences per second of the bare encoder (base model) on random tokens, fp32, eval mode.

    Runs `warmup` batches, then batches until `seconds` have passed (at least 3); reports the
    median batch time.
    """
    encoder = model.base_model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    for _ in range(warmup):
        encoder(input_ids=ids, attention_mask=mask)
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        encoder(input_ids=ids, attention_mask=mask)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return {"batch_size": batch_size, "seq_len": seq_len, "batches": len(times), "seconds_per_batch": median,
            "sequences_per_second": batch_size / median}
