"""What a causal LM says and how fast: batch-1 greedy decode speed (interleaved, report/timing.py) and
greedy continuations of fixed prompts.

Decode speed: `generate(do_sample=False)` with the KV cache on a `prompt_tokens`-token prompt of
seeded random ids, exactly `new_tokens` new tokens (`min_new_tokens = max_new_tokens`); tokens/s =
new tokens / seconds of the whole call (the prompt's prefill included). benchmarks/bench_decode.py
times the same call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from .timing import compare, measuring_threads

log = logging.getLogger(__name__)


def prompt_ids(vocab: int, batch: int, length: int, low: int = 3) -> torch.Tensor:
    """(batch, length) seeded random token ids in [low, vocab): the same prompt for every model."""
    return torch.randint(low, vocab, (batch, length), generator=torch.Generator().manual_seed(0))


def decode_call(model, prompt: torch.Tensor, new_tokens: int) -> Callable[[], None]:
    """A callable generating exactly `new_tokens` greedily after `prompt` (batch 1, KV cache)."""
    mask = torch.ones_like(prompt)
    kwargs = dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=mask, **kwargs)
        if out.shape[1] != prompt.shape[1] + new_tokens:
            raise RuntimeError(f"generate returned {out.shape[1] - prompt.shape[1]} tokens, not {new_tokens}")

    return run


def decode_speed(
    models: Mapping[str, torch.nn.Module],
    *,
    prompt_tokens: int = 16,
    new_tokens: int = 32,
    seconds: float = 2.0,
    rounds: int = 5,
    threads: int | None = None,
) -> dict:
    """Batch-1 greedy decode tokens/s of every model, timed in interleaved rounds (the first model is
    the baseline of the speed-ups). Returns Comparison.to_dict() plus the settings and
    {"tokens_per_second": {name: new_tokens / median seconds per call}}; speed-ups are None when the
    machine was too busy to trust them."""
    vocab = min(m.config.vocab_size for m in models.values())
    prompt = prompt_ids(vocab, 1, prompt_tokens)
    with measuring_threads(threads) as plan:
        calls = {name: decode_call(model.eval(), prompt, new_tokens) for name, model in models.items()}
        result = compare(calls, seconds=seconds, rounds=rounds, cores=plan["cores"])
    if not result.trusted:
        log.warning("could not measure the decode speed-ups: %s", result.reason)
    out = result.to_dict()
    out.update(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        threads=plan["threads"],
        warnings=list(plan["warnings"]),
        tokens_per_second={k: new_tokens / v["median"] for k, v in out["seconds"].items()},
    )
    return out


def continuations(model, tokenizer, prompts: list[str], new_tokens: int) -> list[str]:
    """The greedy continuation (`new_tokens` at most, stopping at end of sequence) of each prompt,
    decoded without the prompt and without special tokens."""
    texts = []
    model.eval()
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad)
        texts.append(tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts
