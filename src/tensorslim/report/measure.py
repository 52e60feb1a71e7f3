"""Parameters by part, FLOPs per token (from `compress.counts`) and measured throughput of a teacher or a student."""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel

from ..compress.counts import count_parameters, flops_per_token, matrix_weights

encoder_matrix_weights = matrix_weights

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


__all__ = ["count_parameters", "encoder_matrix_weights", "flops_per_token", "throughput"]
