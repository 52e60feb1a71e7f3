"""The run directory of a training command (``--out``) and how it is finished.

Layout::

    <out>/                      the final model: config.json, model.safetensors, tokenizer files,
                                tensorslim_training.json (task, max length, objective, metrics)
    <out>/checkpoints/          Trainer checkpoints checkpoint-<step>/ (safetensors + optimizer,
                                scheduler, RNG and trainer state) and TensorBoard logs runs/
    <out>/stage1/               task distillation: the finished stage-1 model (same layout)

The final model appears in one rename: it is saved into a temporary sibling directory
(``.<out>.final.tmp``), the existing checkpoints are moved in, and the sibling replaces `out`. A checkpoint counts as complete
when its trainer_state.json exists (Trainer writes it last).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import TensorslimError
from ..io import MARKER, check_output_dir, write_json

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
INFO_FILE = "tensorslim_training.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-step checkpoint-<N> under `checkpoints` whose trainer_state.json exists."""
    if not checkpoints.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def is_finished(path: Path) -> bool:
    """True when `path` holds a finished model written by tensorslim."""
    return (path / MARKER).exists() and (path / "config.json").is_file() and (path / INFO_FILE).is_file()


def prepare(out: str | Path, resume: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """Check `out` and return (out, checkpoint to resume from or None).

    Without --resume an earlier run's checkpoints are refused (or removed with --overwrite); with
    --resume the last complete checkpoint is used, and training starts afresh when there is none.
    """
    out = Path(out)
    checkpoints = out / CHECKPOINTS
    last = last_complete_checkpoint(checkpoints)
    if not is_main_process():  # distributed workers: the main process checks and prepares `out`
        return out, last if resume else None
    out = check_output_dir(out, overwrite or resume)
    if resume:
        if last is None:
            log.warning("--resume: no complete checkpoint in %s; starting from the beginning", checkpoints)
        else:
            log.info("resuming from %s", last)
        _mark(out)
        return out, last
    if out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
        if not overwrite:
            raise TensorslimError(
                f"output directory {out} holds an earlier run" + (f" (last checkpoint {last.name})" if last else ""),
                "pass --resume to continue it, --overwrite to start over, or choose another --out",
            )
        log.info("--overwrite: removing the contents of %s", out)
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    _mark(out)
    return out, None


def _mark(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def staging_dir(out: Path) -> Path:
    """The temporary sibling the final model is written to before `publish` renames it to `out`.

    A fixed name, so that every distributed worker can take part in saving.
    """
    return out.with_name(f".{out.name}.final.tmp")


def clear_staging(out: Path) -> Path:
    staged = staging_dir(out)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True, exist_ok=True)
    return staged


def publish(out: Path, info: dict) -> Path:
    """Replace `out` by its staged final model in one rename, keeping the checkpoints of `out`."""
    staged = staging_dir(out)
    moved: list[str] = []
    try:
        write_json(staged / INFO_FILE, info)
        (staged / MARKER).touch()
        for entry in out.iterdir():
            if entry.name != MARKER and not (staged / entry.name).exists():
                os.replace(entry, staged / entry.name)
                moved.append(entry.name)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        for name in moved:  # put the checkpoints back before dropping the staged model
            if (staged / name).exists():
                os.replace(staged / name, out / name)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("saved the final model to %s", out)
    return out
