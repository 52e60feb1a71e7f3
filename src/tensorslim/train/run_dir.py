"""The run directory of a training command (``--out``) and how it is finished.

Layout::

    <out>/                      the final model: config.json, model.safetensors, tokenizer files,
                                tensorslim_training.json (task, max length, objective, metrics)
    <out>/checkpoints/          Trainer checkpoints checkpoint-<step>/ (safetensors + optimizer,
                                scheduler, RNG and trainer state) and TensorBoard logs runs/
    <out>/stage1/               task distillation: the finished stage-1 model (same layout)

The final model appears in one rename: it is saved into a temporary sibling directory
(``.<out>.final.tmp``), the existing checkpoints are moved in, and the sibling replaces `out`.
A process killed halfway through that leaves the pieces beside `out`; `--resume` finishes the
move (`recover`) instead of losing the checkpoints.

`out` follows the output policy of `tensorslim.io`: an earlier run in it is continued with --resume
or replaced with --overwrite, never both, and never when `out` is, contains or lies inside an input.
A replacement is trained in the build sibling ``.<out>.build`` (`prepare` returns it as the work
directory) and swapped in by `finish` once complete, so the earlier model survives any failure.

--resume continues from the newest checkpoint that is complete and verifies (`checkpoint_problem`:
trainer_state.json parses, the weights' safetensors headers match their file sizes, optimizer and
scheduler files are whole); a newer torn or corrupt one (e.g. a process killed while writing it)
is skipped with a warning naming it, and training writes it again when it gets there. When no
checkpoint verifies, --resume warns and starts from the beginning, as it does when there is no
checkpoint at all: with the same seed that reaches the same result, just later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from ..errors import TensorslimError
from ..io import (
    MARKER,
    begin_dir,
    build_path,
    check_output_dir,
    finish_dir,
    read_marker,
    replacing,
    swap_dir,
    write_json,
    write_marker,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
INFO_FILE = "tensorslim_training.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# transformers' Trainer._save_checkpoint (5.x) writes straight into checkpoint-<step>/, with no
# temporary directory or rename: the model (model.safetensors, config, tokenizer, training_args.bin),
# then optimizer.pt and scheduler.pt, rng_state.pth, and trainer_state.json last; then it deletes
# old checkpoints beyond save_total_limit. A kill can therefore leave any prefix of that list, and
# a checkpoint being rewritten (after resuming from an earlier one) can mix two runs' files; hence
# every file is checked, not just the presence of trainer_state.json.
# Under FSDP, accelerate writes the optimizer as optimizer.bin (full state dict, the default) or an
# optimizer_0/ torch.distributed.checkpoint directory (sharded state dict, which also puts the model
# in pytorch_model_fsdp_0/ instead of model.safetensors), and the full model as pytorch_model_fsdp.bin.
_OPTIMIZER = ("optimizer.pt", "optimizer.bin", "optimizer_0")
_FSDP_MODEL = ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_0")


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint directory `path` cannot be resumed from, or None when it is complete."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (written last: the checkpoint is incomplete)"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is unreadable ({exc})"
    match = _CHECKPOINT.match(path.name)
    if not isinstance(state, dict) or (match and state.get("global_step") != int(match.group(1))):
        return f"trainer_state.json does not describe step {match.group(1) if match else '?'}"
    weights = [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weights = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return f"{index.name} is unreadable ({exc})"
    elif not weights[0].exists() and (path / _FSDP_MODEL[1]).is_dir():
        weights = []  # FSDP's sharded state dict: the model is only in pytorch_model_fsdp_0/
    for file in weights:
        problem = _safetensors_problem(file)
        if problem:
            return problem
    optimizer = next((path / name for name in _OPTIMIZER if (path / name).exists()), path / _OPTIMIZER[0])
    torch_files = [path / name for name in _FSDP_MODEL if (path / name).exists()] + [optimizer, path / "scheduler.pt"]
    return next((problem for file in torch_files if (problem := _torch_problem(file))), None)


def _torch_problem(file: Path) -> str | None:
    """Whether `file` is a whole torch.save archive, or a torch.distributed.checkpoint directory with
    its .metadata (written after the shards)."""
    if file.is_dir():
        return None if (file / ".metadata").is_file() else f"{file.name}/ has no .metadata (it is incomplete)"
    try:
        with zipfile.ZipFile(file):  # torch.save's zip archive ends with its directory
            return None
    except FileNotFoundError:
        return f"{file.name} is missing"
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{file.name} is truncated or corrupt ({exc})"


def _safetensors_problem(file: Path) -> str | None:
    """Whether `file` is a whole safetensors file: an 8-byte header size, a JSON header, then
    exactly the bytes its tensors' offsets describe."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{file.name} is truncated ({size} bytes, header of {length})"
            header = json.loads(handle.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except FileNotFoundError:
        return f"{file.name} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{file.name} has an unreadable header ({exc})"
    if 8 + length + end != size:
        return f"{file.name} holds {size} bytes but its tensors need {8 + length + end}"
    return None


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-step checkpoint-<N> under `checkpoints` that verifies (`checkpoint_problem`).

    Newer ones that do not are skipped with a warning naming them.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def is_finished(path: Path) -> bool:
    """True when `path` holds a finished model written by tensorslim."""
    return (path / MARKER).exists() and (path / "config.json").is_file() and (path / INFO_FILE).is_file()


def check(out: str | Path, resume: bool, overwrite: bool, command: str, inputs: tuple = ()) -> Path:
    """Refuse a bad `out` before any work (see `prepare`); creates nothing."""
    out = Path(out)
    if resume and overwrite:
        raise TensorslimError(
            "--resume and --overwrite contradict each other",
            "pass --resume to continue the earlier run, or --overwrite to replace it",
        )
    if not is_main_process():
        return out
    check_output_dir(out, command, inputs=inputs, overwrite=overwrite or (resume and replacing(out, command)))
    if not resume and not overwrite and out.is_dir() and any(p.name != MARKER for p in out.iterdir()):
        last = last_complete_checkpoint(out / CHECKPOINTS)
        raise TensorslimError(
            f"output directory {out} holds an earlier run" + (f" (last checkpoint {last.name})" if last else ""),
            "pass --resume to continue it, --overwrite to replace it (once the new run is complete), "
            "or choose another --out",
        )
    return out


def prepare(
    out: str | Path, resume: bool, overwrite: bool, command: str, inputs: tuple = ()
) -> tuple[Path, Path | None]:
    """Check `out` (`check`) and return (work directory, checkpoint to resume from or None).

    Without --resume an earlier run in `out` is refused, or with --overwrite replaced: the new run
    is built in `io.build_path(out)` and `finish` swaps it in. With --resume the last complete
    checkpoint of the work directory is used, and training starts afresh when there is none.
    Call it after every input has been loaded and checked.
    """
    out = check(out, resume, overwrite, command, inputs)
    if not is_main_process():  # distributed workers: the main process prepared the work directory
        work = build_path(out) if build_path(out).is_dir() else out
        return work, last_complete_checkpoint(work / CHECKPOINTS) if resume else None
    work = begin_dir(out, command, continue_existing=resume)
    if not resume:
        return work, None
    recover(work)
    last = last_complete_checkpoint(work / CHECKPOINTS)
    if last is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", work / CHECKPOINTS)
    else:
        log.info("resuming from %s", last)
    return work, last


def finish(work: Path, out: Path, command: str) -> Path:
    """Put the finished run in `work` in place of `out` (a no-op when they are the same)."""
    if is_main_process():
        finish_dir(work, out, command)
    return Path(out)


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


def _old_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def publish(out: Path, info: dict) -> Path:
    """Replace `out` by its staged final model in one rename, keeping the checkpoints of `out`."""
    staged = staging_dir(out)
    moved: list[str] = []
    try:
        write_json(staged / INFO_FILE, info)  # after the model files: a staged INFO_FILE means a whole model
        write_marker(staged, info["command"])
        _swap(out, staged, moved)
    except BaseException:
        if not out.exists() and _old_dir(out).exists():  # stopped between the two renames
            os.replace(_old_dir(out), out)
        for name in moved:  # put the checkpoints back before dropping the staged model
            if (staged / name).exists():
                os.replace(staged / name, out / name)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("saved the final model to %s", out)
    return out


def _swap(out: Path, staged: Path, moved: list[str]) -> None:
    """Move the entries of `out` into `staged` (appending their names to `moved`), then rename
    `staged` to `out`."""
    for entry in out.iterdir():
        if entry.name != MARKER and not (staged / entry.name).exists():
            os.replace(entry, staged / entry.name)
            moved.append(entry.name)
    write_marker(staged, (read_marker(staged) or {}).get("command") or "unknown", finished=True)
    swap_dir(staged, out)


def recover(out: Path) -> None:
    """Finish a `publish` that a killed process left halfway: the staged model is complete (its
    INFO_FILE is written after the model) but `out` still holds, or has already given up, the
    checkpoints. Without this, --resume would find no checkpoint and start over."""
    staged, old = staging_dir(out), _old_dir(out)
    if (staged / INFO_FILE).is_file() and (staged / MARKER).exists():
        log.warning("completing the final save of %s that an interrupted run left in %s", out, staged)
        out.mkdir(exist_ok=True)
        _swap(out, staged, [])
    shutil.rmtree(old, ignore_errors=True)
