"""Calibration data for data-aware decomposition: a few hundred sequences tokenized as the model sees them.

`spec` (a path) is one of, recognised in this order:

- a pregenerated directory (holds pregenerate.json, see docs/pregenerate.md): a seeded random sample
  of epoch 0's sequences, input_ids and token_type_ids as stored (masked positions stay [MASK]);
  the shards must come from the same vocabulary as `tokenizer`;
- a GLUE task directory (holds train.tsv and is named after its task, e.g. ``glue/SST-2``): a seeded
  random sample of the training examples, encoded as fine-tuning encodes them (pairs as pairs,
  special tokens, token_type_ids when the tokenizer makes them);
- a plain-text file or directory (any layout of `data.corpus`), cut into windows: for causal models
  the packed windows of exactly `seq_length` tokens of `data.packing`; for encoders the consecutive
  sentences of a document joined while they fit in `seq_length` tokens with the special tokens, then
  encoded as one sentence. At most `POOL` x `samples` windows are read from the start of the corpus
  (the whole of WikiText-2 at the defaults), and a seeded random sample of `samples` of them is kept.

Every sequence is cut at `seq_length` tokens; the kept sequences stay in file order and are batched
`batch_size` at a time, right-padded to the longest of their batch (attention_mask 0 on the pads).
The same arguments give the same batches.
"""

from __future__ import annotations

import inspect
import logging
import random
from itertools import islice
from pathlib import Path

import torch

from ..errors import TensorslimError
from ..validate import check_at_least
from .corpus import read_documents
from .glue import get_task, load_examples
from .packing import packed_sequences
from .pregenerate import MANIFEST, STATE, load_pregenerated, read_manifest, tokenizer_fingerprint

log = logging.getLogger(__name__)

#: Plain text: windows read from the start of the corpus, per calibration sequence asked for.
POOL = 16
FORMATS = (
    "a GLUE task directory (holding train.tsv), a pregenerated directory (holding pregenerate.json) "
    "or UTF-8 plain text (a file or a directory of files)"
)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The tensors of a calibration `batch` that `model.forward` takes, on `device`."""
    takes = inspect.signature(model.forward).parameters
    return {name: batch[name].to(device) for name in MODEL_INPUTS if name in batch and name in takes}


def calibration_batches(
    spec, tokenizer, *, samples: int = 256, seq_length: int = 512, batch_size: int = 8, seed: int = 0, causal: bool
) -> list[dict[str, torch.Tensor]]:
    """Batches {input_ids, attention_mask[, token_type_ids]: (B, T) long} of at most `samples`
    sequences in all, read from `spec` (see the module docstring)."""
    check_at_least("--calibration-samples", samples, 1)
    check_at_least("--calibration-seq-length", seq_length, 2)
    check_at_least("--batch-size", batch_size, 1)
    path = Path(spec)
    if not path.exists():
        raise TensorslimError(f"calibration data {path} does not exist", f"pass {FORMATS}")
    rng = random.Random(seed)
    if path.is_dir() and ((path / MANIFEST).exists() or (path / STATE).exists()):
        kind, rows = "pregenerated", _pregenerated(path, tokenizer, samples, seq_length, rng)
    elif path.is_dir() and (path / "train.tsv").is_file():
        kind, rows = "GLUE", _glue(path, tokenizer, samples, seq_length, rng)
    elif path.is_file() and path.suffix.lower() == ".tsv":
        raise TensorslimError(
            f"calibration data {path} is a TSV file", f"pass the GLUE task directory that holds it ({path.parent})"
        )
    elif path.is_dir() and (tasks := sorted(path.glob("*/train.tsv"))):
        raise TensorslimError(
            f"calibration data {path} holds {len(tasks)} GLUE task(s)",
            f"pass one task's directory, e.g. {tasks[0].parent}",
        )
    else:
        kind, rows = "text", _text(path, tokenizer, samples, seq_length, rng, causal)
    if not rows:
        raise TensorslimError(f"calibration data {path} holds no sequence", f"pass {FORMATS} with some text in it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = [_pad(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    log.info("calibration data (%s, %s): %d sequences, %d tokens", kind, path, len(rows), tokens)
    return batches


def _sample(count: int, samples: int, rng: random.Random) -> list[int]:
    """`samples` of range(count) (all when fewer), in increasing order."""
    return sorted(rng.sample(range(count), min(samples, count)))


def _pregenerated(path: Path, tokenizer, samples: int, seq_length: int, rng) -> list[dict[str, list[int]]]:
    made_with = read_manifest(path).get("tokenizer", {}).get("vocab_sha256")
    if made_with != tokenizer_fingerprint(tokenizer)["vocab_sha256"]:
        raise TensorslimError(
            f"the pregenerated data in {path} was made with another vocabulary than the model's tokenizer",
            "pregenerate the calibration data with the model's own tokenizer",
        )
    data = load_pregenerated(path, epoch=0)
    rows = data.select(_sample(len(data), samples, rng)).select_columns(["input_ids", "token_type_ids"]).to_list()
    return [
        {
            "input_ids": row["input_ids"][:seq_length],
            "token_type_ids": row["token_type_ids"][:seq_length],
            "attention_mask": [1] * min(seq_length, len(row["input_ids"])),
        }
        for row in rows
    ]


def _glue(path: Path, tokenizer, samples: int, seq_length: int, rng) -> list[dict[str, list[int]]]:
    try:
        task = get_task(path.name)
    except TensorslimError as err:
        raise TensorslimError(
            f"{path} holds train.tsv but is not named after a GLUE task ({err.problem})",
            "keep the GLUE download layout: <glue_dir>/<TASK>/train.tsv, e.g. glue/SST-2",
        ) from None
    examples = load_examples(path, task, "train")
    examples = [examples[i] for i in _sample(len(examples), samples, rng)]
    pairs = [e.text_b for e in examples] if task.text_fields("train")[1] is not None else None
    return _rows(tokenizer([e.text_a for e in examples], pairs, truncation=True, max_length=seq_length))


def _text(path: Path, tokenizer, samples: int, seq_length: int, rng, causal: bool) -> list[dict[str, list[int]]]:
    try:
        if causal:
            windows = list(islice(packed_sequences([path], tokenizer, seq_length), POOL * samples))
        else:
            windows = list(islice(_sentence_windows(path, tokenizer, seq_length), POOL * samples))
    except TensorslimError as err:
        if path.is_file():
            raise
        raise TensorslimError(f"calibration data {path}: {err.problem}", f"pass {FORMATS}") from None
    if not windows and causal:
        raise TensorslimError(
            f"calibration data {path} holds fewer than {seq_length} tokens: not one packed sequence",
            "pass more text or a smaller --calibration-seq-length",
        )
    windows = [windows[i] for i in _sample(len(windows), samples, rng)]
    if causal:
        return [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in windows]
    return _rows(tokenizer(windows, truncation=True, max_length=seq_length))


def _sentence_windows(path: Path, tokenizer, seq_length: int):
    """Texts of consecutive sentences of one document that fit `seq_length` tokens with the special
    tokens (a longer sentence stands alone and is truncated when encoded)."""
    budget = seq_length - tokenizer.num_special_tokens_to_add(pair=False)
    for sentences in read_documents([path]):
        lengths = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
        window, used = [], 0
        for sentence, length in zip(sentences, lengths, strict=True):
            if window and used + length > budget:
                yield " ".join(window)
                window, used = [], 0
            window.append(sentence)
            used += length
        if window:
            yield " ".join(window)


def _rows(encoded) -> list[dict[str, list[int]]]:
    names = [n for n in ("input_ids", "token_type_ids", "attention_mask") if n in encoded]
    return [dict(zip(names, values, strict=True)) for values in zip(*(encoded[n] for n in names), strict=True)]


def _pad(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """(B, T) long tensors, right-padded to the longest row (pad_id in input_ids, 0 elsewhere)."""
    width = max(len(row["input_ids"]) for row in rows)
    batch = {}
    for name in rows[0]:
        fill = pad_id if name == "input_ids" else 0
        batch[name] = torch.tensor([row[name] + [fill] * (width - len(row[name])) for row in rows], dtype=torch.long)
    return batch
