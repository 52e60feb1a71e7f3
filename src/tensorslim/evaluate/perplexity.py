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
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import TensorslimError

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENGTH = 2048

#: How `read_text` prepares a file, and how `score` scores it (both recorded in the results).
READING = (
    "the file's lines (blank lines as empty strings) joined with blank lines, tokenized once without special tokens"
)
SCORING = (
    "non-overlapping windows of seq_length tokens (the remainder dropped), each scored on its own; "
    "nll = mean negative log-likelihood (nats) of tokens 2..seq_length of every window given the tokens "
    "before it in that window; perplexity = exp(nll); bits_per_byte = the total NLL in bits over the "
    "UTF-8 bytes of the scored tokens' text"
)


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


def context_length(config) -> int | None:
    """The longest sequence a model's positions allow, if its config says."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_seq_length(config, seq_length: int | None) -> int:
    """`seq_length`, or 2048 capped at the context of a `config` model; refuses lengths beyond it."""
    limit = context_length(config)
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


@dataclass
class Windows:
    """A text cut into windows: `ids` (windows, seq_length) and each token's (start, end) character
    `offsets` in `text`, for the whole text (`tokens_in_text` tokens)."""

    text: str
    ids: torch.Tensor
    offsets: list[tuple[int, int]]
    tokens_in_text: int
    max_tokens: int | None

    def scored_bytes(self, window: int) -> int:
        """UTF-8 bytes of the text of tokens 2..seq_length of `window`."""
        length = self.ids.shape[1]
        first, last = window * length + 1, (window + 1) * length - 1
        return len(self.text[self.offsets[first][0] : self.offsets[last][1]].encode("utf-8"))


def windows_of(tokenizer, text: str, seq_length: int, max_tokens: int | None = None) -> Windows:
    """Tokenize `text` (a fast tokenizer: offsets give the bytes) and cut it into windows; refuses a
    text or `max_tokens` prefix shorter than one window."""
    if not getattr(tokenizer, "is_fast", False):
        raise TensorslimError(
            f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer",
            "save the model with its fast tokenizer (tokenizer.json), as AutoTokenizer loads by default",
        )
    if max_tokens is not None and max_tokens < seq_length:
        raise TensorslimError(
            f"--max-tokens {max_tokens} is shorter than one window of {seq_length} tokens",
            f"pass --max-tokens of at least {seq_length}, or a smaller --seq-length",
        )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    total = ids.numel()
    ids = ids[:max_tokens] if max_tokens is not None else ids
    windows = ids.numel() // seq_length
    if windows == 0:
        raise TensorslimError(
            f"the text has {total} tokens, fewer than one window of {seq_length}",
            "pass a longer text or a smaller --seq-length",
        )
    data = ids[: windows * seq_length].view(windows, seq_length)
    return Windows(text, data, encoding["offset_mapping"], total, max_tokens)


@torch.no_grad()
def score(model, windows: Windows, batch_size: int = 1, device: str | torch.device | None = None) -> dict:
    """Score `model` on `windows` (see the module docstring); returns the JSON-ready result."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    count, seq_length = windows.ids.shape
    total_nll, scored, scored_bytes = 0.0, 0, 0
    for start in tqdm(range(0, count, batch_size), desc="perplexity", unit="batch", leave=False):
        batch = windows.ids[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        scored += batch[:, 1:].numel()
        scored_bytes += sum(windows.scored_bytes(w) for w in range(start, start + batch.shape[0]))
    if not math.isfinite(total_nll):
        raise TensorslimError(
            "the model's loss on the text is not finite",
            "the model is damaged or overflows in this precision: check its weights, or score it in float32",
        )
    mean = total_nll / scored
    result = {
        "protocol": SCORING,
        "seq_length": seq_length,
        "windows": count,
        "tokens_scored": scored,
        "tokens_in_text": windows.tokens_in_text,
        "max_tokens": windows.max_tokens,
        "nll": mean,
        "perplexity": math.exp(mean),
        "bits_per_byte": total_nll / math.log(2) / scored_bytes if scored_bytes else None,
    }
    log.info(
        "perplexity %.4f (%d windows of %d tokens, %.4f bits per byte)",
        result["perplexity"],
        count,
        seq_length,
        result["bits_per_byte"] or float("nan"),
    )
    return result


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
    windows = windows_of(tokenizer, text, resolve_seq_length(model.config, seq_length), max_tokens)
    return score(model, windows, batch_size, device)
