"""Crash-safe output: everything is written under a temporary name and renamed when complete.

A crash or an interrupt therefore never leaves a file or directory that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import TensorslimError

log = logging.getLogger(__name__)

#: A directory we created carries this marker, so that re-runs may replace it without --overwrite.
MARKER = ".tensorslim"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the half-written `atomic_file` temporaries a killed process left in `directory`
    for files called `name` (a glob); return what was removed."""
    stale = [p for p in Path(directory).glob(f".{name}.*.tmp") if p.is_file()]
    for path in stale:
        log.info("removing %s, left half-written by an interrupted run", path)
        path.unlink(missing_ok=True)
    return stale


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to write into an existing directory that we did not create, unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TensorslimError(f"output path {path} exists and is a file", "choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists() and not overwrite:
        raise TensorslimError(
            f"output directory {path} exists, is not empty and was not written by tensorslim",
            "choose another --out, or pass --overwrite to replace its contents",
        )
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    The finished directory carries the MARKER file. On error the temporary directory is removed
    and `path` is left as it was.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise TensorslimError(f"cannot write to {path.parent} (read-only)", "choose a writable --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        (tmp / MARKER).touch()
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
