"""Run state that makes pregenerate resumable: the settings a --resume must match and the finished shards.

STATE holds the settings, corpus file sizes and tokenizer fingerprint from the start of a run until
the manifest exists; PROGRESS gets one JSON line per finished shard (its counts and file sizes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

from ...errors import TensorslimError
from ...io import begin_dir, build_path, check_output_dir, remove_stale_temporaries, replacing, write_json
from .config import PregenerateConfig
from .layout import COMMAND, MANIFEST, PROGRESS, STATE, shard_files

log = logging.getLogger(__name__)


def run_settings(config: PregenerateConfig, corpus_files: list[Path], tokenizer_info: dict) -> dict:
    """What makes two runs produce the same output: settings, corpus files (path, size), tokenizer."""
    files = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in corpus_files]
    return {"config": dataclasses.asdict(config), "corpus_files": files, "tokenizer": tokenizer_info}


def prepare(out: Path, settings: dict, resume: bool, overwrite: bool) -> tuple[Path, dict[int, dict] | None]:
    """Set up the directory to write (`out`, or its build sibling when replacing an earlier `out`:
    see tensorslim.io); return it with the finished shards to skip ({shard: progress record}), or
    None when a finished run with the same settings is already there."""
    work = build_path(out) if resume and (build_path(out) / STATE).exists() else out
    state, manifest = work / STATE, work / MANIFEST
    if resume and state.exists():
        if json.loads(state.read_text()) != settings:
            raise TensorslimError(
                f"{out} holds an interrupted run with different settings, corpus or tokenizer",
                "rerun with exactly the same arguments, or drop --resume to start over",
            )
        _remove_temporaries(work)
        return work, _read_progress(work / PROGRESS)
    if resume and manifest.exists():
        previous = json.loads(manifest.read_text())
        if {k: previous.get(k) for k in settings} != settings:
            raise TensorslimError(
                f"{out} holds a finished run with different settings, corpus or tokenizer",
                "drop --resume to regenerate, or choose another --out",
            )
        log.info("%s is already complete; nothing to do", out)
        return work, None
    if resume:
        log.info("nothing to resume in %s; starting a new run", out)
    check_output_dir(out, COMMAND, overwrite=overwrite or (resume and replacing(out, COMMAND)))
    work = begin_dir(out, COMMAND)
    write_json(work / STATE, settings)
    return work, {}


def is_done(out: Path, record: dict | None, config: PregenerateConfig) -> bool:
    """A shard counts as done if listed in the progress log and its files exist with the listed sizes."""
    if record is None:
        return False
    for epoch, counts in enumerate(record["epochs"]):
        for path in shard_files(out, record["shard"], epoch, config.formats):
            kind = path.suffix[1:]
            if kind == "jsonl" and (out / f"epoch_{epoch}.json").exists():
                continue  # parts already merged by an earlier, interrupted finalisation
            if not path.exists() or path.stat().st_size != counts["bytes"][kind]:
                return False
    return True


def clear(out: Path) -> None:
    """Remove the run-state files once pregenerate.json is written."""
    for name in (STATE, PROGRESS):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def _remove_temporaries(out: Path) -> None:
    """Delete the half-written files a killed run left in `out` and its epoch directories."""
    for directory in [out, *out.glob("epoch_*")]:
        remove_stale_temporaries(directory)


def _read_progress(path: Path) -> dict[int, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                done[record["shard"]] = record
    return done
