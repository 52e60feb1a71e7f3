"""pregenerate.json: written last from the shards' records (per-epoch metrics, shard list), then read
back by `read_manifest` and `load_pregenerated`, which check it against the files."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

from ...errors import TensorslimError
from ...io import atomic_file, write_json
from .config import PregenerateConfig
from .layout import MANIFEST, MANIFEST_FORMAT, STATE, shard_files

log = logging.getLogger(__name__)


def finalize(out: Path, config: PregenerateConfig, settings: dict, corpus: dict, records: list[dict]) -> None:
    """Merge JSON parts, write per-epoch metrics, then pregenerate.json (`corpus`: documents, sentences,
    layouts; `records`: every shard's progress record in shard order)."""
    epochs = []
    for epoch in range(config.epochs):
        counts = [r["epochs"][epoch] for r in records]
        total = {key: sum(c[key] for c in counts) for key in ("sequences", "tokens", "masked", "random_next")}
        metrics = {
            "num_sequences": total["sequences"],
            "max_seq_len": config.max_seq_len,
            "num_documents": sum(r["documents"] for r in records),
            "num_shards": len(records),
            "num_tokens": total["tokens"],
            "num_masked_tokens": total["masked"],
            "num_random_next": total["random_next"],
            "mean_seq_len": round(total["tokens"] / max(1, total["sequences"]), 3),
        }
        entry = {"epoch": epoch, **metrics}
        if "arrow" in config.formats:
            write_json(out / f"epoch_{epoch}" / "metrics.json", metrics)
            entry["shards"] = [
                {
                    "file": shard_files(Path(), r["shard"], epoch, ["arrow"])[0].as_posix(),
                    "num_sequences": c["sequences"],
                    "bytes": c["bytes"]["arrow"],
                }
                for r, c in zip(records, counts, strict=True)
            ]
        if "json" in config.formats:
            _merge_json(out, epoch, records)
            write_json(
                out / f"epoch_{epoch}_metrics.json",
                {"num_training_examples": total["sequences"], "max_seq_len": config.max_seq_len},
            )
            entry["json"] = f"epoch_{epoch}.json"
        epochs.append(entry)
    manifest = {"format": MANIFEST_FORMAT, **settings, "corpus": corpus, "num_shards": len(records), "epochs": epochs}
    write_json(out / MANIFEST, manifest)
    log.info(
        "wrote %d epoch(s) x %d sequences in %d shard(s) to %s",
        config.epochs,
        epochs[0]["num_sequences"],
        len(records),
        out,
    )


def _merge_json(out: Path, epoch: int, records: list[dict]) -> None:
    target = out / f"epoch_{epoch}.json"
    parts = [shard_files(out, r["shard"], epoch, ["json"])[0] for r in records]
    if not target.exists():
        with atomic_file(target, "wb") as handle:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, handle)
    for part in parts:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    with contextlib.suppress(OSError):
        (out / f"epoch_{epoch}").rmdir()  # only when empty (--format json)


def read_manifest(path) -> dict:
    """pregenerate.json of a finished output directory; TensorslimError if missing or incomplete."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        if (path / STATE).exists():
            raise TensorslimError(
                f"{path} holds an unfinished pre-generation run (no {MANIFEST})",
                "rerun the same `tensorslim pregenerate` command with --resume",
            )
        raise TensorslimError(
            f"{path} is not a pre-generated data directory (no {MANIFEST})",
            f"run `tensorslim pregenerate --out {path} ...` first",
        )
    try:
        data = json.loads(manifest.read_text())
    except ValueError as exc:
        raise TensorslimError(f"{manifest} is not valid JSON: {exc}", "regenerate the data") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise TensorslimError(
            f"{manifest} has format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}",
            "regenerate the data with this version of tensorslim",
        )
    return data


def load_pregenerated(path, epoch: int | None = None):
    """Memory-map the Arrow shards of `path` as a `datasets.Dataset` (epoch None: all epochs in order).

    Columns: input_ids, token_type_ids, masked_lm_positions, masked_lm_labels, is_random_next.
    Checks pregenerate.json and every shard's size; raises TensorslimError when anything is missing.
    """
    from datasets import Dataset, concatenate_datasets

    path = Path(path)
    manifest = read_manifest(path)
    epochs = manifest["epochs"]
    if "shards" not in epochs[0]:
        raise TensorslimError(
            f"{path} holds only the release's JSON format, not Arrow shards", "regenerate with --format arrow (or both)"
        )
    if epoch is not None:
        if not 0 <= epoch < len(epochs):
            raise TensorslimError(
                f"epoch {epoch} requested but {path} holds epochs 0..{len(epochs) - 1}",
                "pass an epoch in that range, or None for all",
            )
        epochs = [epochs[epoch]]
    parts = []
    for entry in epochs:
        for shard in entry["shards"]:
            file = path / shard["file"]
            if not file.is_file() or file.stat().st_size != shard["bytes"]:
                raise TensorslimError(
                    f"shard {file} is missing or has the wrong size (expected {shard['bytes']} bytes)",
                    "regenerate the data (the directory is incomplete or was modified)",
                )
            parts.append(Dataset.from_file(str(file)))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    expected = sum(e["num_sequences"] for e in epochs)
    if len(dataset) != expected:
        raise TensorslimError(
            f"{path} holds {len(dataset)} sequences, pregenerate.json lists {expected}", "regenerate the data"
        )
    return dataset
