"""`evaluate_perplexity`: a causal LM directory (dense or a tensorslim student) scored on a text file,
results written as JSON.

Everything a user can get wrong is refused before the weights load: the output, the numbers, the
device, the model directory (a GGUF file, an unsupported family, no causal-LM head), the window
length against the model's context and the text against one window. The results file,
perplexity_results.json, holds {"model", "text", "protocol", "seq_length", "windows",
"tokens_scored", "tokens_in_text", "max_tokens", "nll", "perplexity", "bits_per_byte"}; "protocol"
states how the text was read and scored (perplexity.READING and SCORING).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..compress.loading import infer_head, load_config, load_model
from ..errors import TensorslimError
from ..io import write_json
from ..validate import check_at_least, check_device, check_existing_file, check_finite_weights, check_output_file
from .perplexity import READING, SCORING, read_text, resolve_seq_length, score, windows_of

log = logging.getLogger(__name__)

RESULTS_FILE = "perplexity_results.json"


def load_tokenizer(model_dir: Path):
    """The tokenizer saved in `model_dir`."""
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise TensorslimError(
            f"no usable tokenizer in {model_dir} ({exc})",
            "save the tokenizer beside the model (tokenizer.save_pretrained(DIR)); decompose copies the teacher's",
        ) from None


def evaluate_perplexity(
    model: str | Path,
    text: str | Path,
    out: str | Path | None = None,
    *,
    seq_length: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
) -> dict:
    """Score the causal LM in directory `model` on text file `text` (perplexity.py's protocol) and
    write `out`/perplexity_results.json (default `out`: the model directory). Returns the results."""
    model_dir, text = Path(model), Path(text)
    config = load_config(model_dir)
    out = Path(out) if out is not None else model_dir
    if out.exists() and not out.is_dir():
        raise TensorslimError(f"--out {out} is a file", "pass a directory for --out")
    results_path = check_output_file(out / RESULTS_FILE, "--out", inputs=[text], ours=("perplexity", "protocol"))
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-tokens", max_tokens, 2)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    check_existing_file(text, "--perplexity")
    if infer_head(config) != "causal_lm":
        arch = (getattr(config, "architectures", None) or ["no architecture"])[0]
        raise TensorslimError(
            f"{model_dir} ({arch}) is not a causal language model, so it has no perplexity",
            "pass a decoder saved with its LM head (a ...ForCausalLM), or a student decomposed from one",
        )
    length = resolve_seq_length(config, seq_length)
    windows = windows_of(load_tokenizer(model_dir), read_text(text), length, max_tokens)
    check_finite_weights(model_dir)
    log.info("scoring %s on %d windows of %d tokens of %s", model_dir, windows.ids.shape[0], length, text)
    result = score(load_model(model_dir, "causal_lm"), windows, batch_size, device)
    result["protocol"] = f"{READING}; {SCORING}"
    results = {"model": str(model_dir), "text": str(text), **result}
    write_json(results_path, results)
    return results
