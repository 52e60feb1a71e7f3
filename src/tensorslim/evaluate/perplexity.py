"""Perplexity of a causal LM on a text, by the protocol of the LLM compression papers.

The protocol of GPTQ, SparseGPT, SliceGPT, SVD-LLM and Basis Sharing on WikiText-2: the test split's
lines (HF `wikitext-2-raw-v1`: every line of `wiki.test.raw`, blank lines as empty strings) joined
with blank lines ("\\n\\n"), tokenized once without special tokens, cut into non-overlapping windows
of `seq_length` tokens (the remainder dropped), each window scored on its own: the mean negative
log-likelihood of tokens 2..seq_length of every window given the tokens before it in that window.
Perplexity is exp of that mean. Bits per byte divide the same total (in bits) by the UTF-8 bytes of
the scored tokens' text, so models with different tokenizers compare.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import TensorslimError

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENGTH = 2048


def read_text(path: str | Path) -> str:
    """A text file's lines, blank lines as empty strings, joined with blank lines (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TensorslimError(f"text file {path} does not exist", "pass a plain-text file, e.g. wiki.test.raw")
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        raise TensorslimError(f"{path} is not UTF-8 text ({exc})", "pass a UTF-8 plain-text file") from None
    return "\n\n".join(line if line.strip() else "" for line in lines)


def context_length(model) -> int | None:
    """The longest sequence the model's positions allow, if its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_seq_length(model, seq_length: int | None) -> int:
    """`seq_length`, or 2048 capped at the model's context; refuses lengths beyond the context."""
    limit = context_length(model)
    if seq_length is None:
        return min(DEFAULT_SEQ_LENGTH, limit) if limit else DEFAULT_SEQ_LENGTH
    if seq_length < 2:
        raise TensorslimError(f"--seq-length {seq_length} is too short", "score windows of at least 2 tokens")
    if limit and seq_length > limit:
        raise TensorslimError(
            f"--seq-length {seq_length} is beyond the model's context of {limit} tokens",
            f"pass --seq-length {limit} or less",
        )
    return seq_length


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    text: str,
    seq_length: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
) -> dict:
    """Score `model` on `text` (see the module docstring); returns the JSON-ready result."""
    seq_length = resolve_seq_length(model, seq_length)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    offsets = encoding["offset_mapping"]
    if max_tokens is not None:
        if max_tokens < seq_length:
            raise TensorslimError(
                f"--max-tokens {max_tokens} is shorter than one window of {seq_length} tokens",
                f"pass --max-tokens of at least {seq_length}, or a smaller --seq-length",
            )
        ids = ids[:max_tokens]
    windows = ids.numel() // seq_length
    if windows == 0:
        raise TensorslimError(
            f"the text has {ids.numel()} tokens, fewer than one window of {seq_length}",
            "pass a longer text or a smaller --seq-length",
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    total_nll, scored, scored_bytes = 0.0, 0, 0
    data = ids[: windows * seq_length].view(windows, seq_length)
    for start in tqdm(range(0, windows, batch_size), desc="perplexity", unit="window", leave=False):
        batch = data[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        scored += batch[:, 1:].numel()
        for w in range(batch.shape[0]):
            first, last = (start + w) * seq_length + 1, (start + w + 1) * seq_length - 1
            scored_bytes += len(text[offsets[first][0] : offsets[last][1]].encode("utf-8"))
    mean = total_nll / scored
    result = {
        "protocol": "non-overlapping windows; mean NLL of tokens 2..L of each window",
        "seq_length": seq_length,
        "windows": windows,
        "tokens_scored": scored,
        "tokens_in_text": len(encoding["input_ids"]),
        "max_tokens": max_tokens,
        "nll": mean,
        "perplexity": math.exp(mean),
        "bits_per_byte": total_nll / math.log(2) / scored_bytes if scored_bytes else None,
    }
    log.info(
        "perplexity %.4f (%d windows of %d tokens, %.4f bits per byte)",
        result["perplexity"],
        windows,
        seq_length,
        result["bits_per_byte"] or float("nan"),
    )
    return result
