"""Crash-safe output and the one output policy every command follows.

Files are written under a temporary name and renamed when complete, so a crash or an interrupt
never leaves a file that looks finished. Directories follow one policy (`check_output_dir`):

- every directory tensorslim writes carries a MARKER file naming the command that wrote it and
  the entries it wrote;
- an existing output is replaced only when the same command wrote it (and nobody added files to
  it since) or with --overwrite, and never when it is, contains or lies inside an input;
- the new result is built beside the old one (a temporary or `.build` sibling) and swapped in at
  the end (`swap_dir`), so a failure or an interrupt leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import TensorslimError

log = logging.getLogger(__name__)

#: Every directory we create carries this marker: {"command": ..., "entries": [...] or null}.
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


# ----------------------------------------------------------------------------- the marker


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker of `directory` ({"command": name or None, "entries": [...] or None}), None without one.

    An empty or unreadable marker (written before markers named their command) gives command None.
    """
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    return {"command": data.get("command"), "entries": data.get("entries")}


def write_marker(directory: str | os.PathLike, command: str, finished: bool = False) -> None:
    """Mark `directory` as written by `command`; `finished` also records its entries (the files
    the command wrote), so that files added later are never deleted by a rerun."""
    directory = Path(directory)
    entries = sorted(p.name for p in directory.iterdir() if p.name != MARKER) if finished else None
    write_json(directory / MARKER, {"command": command, "entries": entries})


# ----------------------------------------------------------------------------- the policy


def overlap(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How path `a` relates to path `b`: "is", "lies inside", "contains", or None (resolved paths)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def check_not_input(out: str | os.PathLike, inputs: Iterable, flag: str = "--out") -> None:
    """Refuse an output that is, lies inside or contains any of `inputs` (None entries are skipped)."""
    for source in inputs:
        if source is None:
            continue
        how = overlap(out, source)
        if how:
            raise TensorslimError(
                f"{flag} {out} {how} the input {source}; writing it would destroy the input",
                f"choose an {flag} outside every input",
            )


def check_writable(path: str | os.PathLike) -> None:
    """Refuse when the nearest existing ancestor of `path` is not a writable directory."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TensorslimError(f"cannot create {path}: {parent} is a file", "choose another output path")
    if not os.access(parent, os.W_OK):
        raise TensorslimError(f"cannot write to {parent} (read-only)", "choose a writable output path")


def check_output_dir(
    path: str | os.PathLike, command: str, *, inputs: Iterable = (), overwrite: bool = False, flag: str = "--out"
) -> Path:
    """Check that `command` may write directory `path`, before any work starts.

    Refused: a file; a path that is, contains or lies inside an input (even with --overwrite); an
    existing non-empty directory that another command (or no tensorslim command) wrote, or that
    holds entries its command did not write, unless `overwrite`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TensorslimError(f"{flag} {path} exists and is a file", f"choose another {flag}")
    check_not_input(path, inputs, flag)
    check_writable(path)
    entries = sorted(p.name for p in path.iterdir() if p.name != MARKER) if path.is_dir() else []
    if not entries:
        return path
    marker = read_marker(path)
    fix = f"choose another {flag}, or pass --overwrite to replace it (the old one stays until the new one is complete)"
    if marker is None:
        problem = f"{flag} {path} exists, is not empty and was not written by tensorslim"
    elif marker["command"] != command:
        writer = f"`tensorslim {marker['command']}`" if marker["command"] else "an older tensorslim"
        problem = f"{flag} {path} holds the output of {writer}, not of `tensorslim {command}`"
    else:
        foreign = sorted(set(entries) - set(marker["entries"])) if marker["entries"] is not None else []
        if not foreign:
            return path
        problem = f"{flag} {path} holds files `tensorslim {command}` did not write: {', '.join(foreign[:5])}"
        fix = "move them out of it, choose another " + flag + ", or pass --overwrite to replace it with them"
    if not overwrite:
        raise TensorslimError(problem, fix)
    log.warning(
        "--overwrite: %s will be replaced once the new output is complete (%d entries: %s%s)",
        path,
        len(entries),
        ", ".join(entries[:5]),
        " ..." if len(entries) > 5 else "",
    )
    return path


def swap_dir(new: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put directory `new` in the place of `out` by renames; the old `out` is deleted only once the
    new one is in place (a failure between the renames puts it back)."""
    new, out = Path(new), Path(out)
    if not out.exists() and not out.is_symlink():
        os.replace(new, out)
        return out
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of `path`; return those created, deepest first."""
    created = []
    parent = path.absolute().parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(directories: Iterable[Path]) -> None:
    """Remove the directories (deepest first) a failed command created, where they are empty."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, command: str, *, inputs: Iterable = (), overwrite: bool = False, flag: str = "--out"
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` (see `swap_dir`).

    `path` is checked first (`check_output_dir`). The finished directory carries the MARKER. On
    error the temporary directory (and any parent directory this call created) is removed and
    `path` is left as it was.
    """
    path = check_output_dir(path, command, inputs=inputs, overwrite=overwrite, flag=flag)
    created = _make_parents(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except BaseException:
        remove_empty(created)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        write_marker(tmp, command, finished=True)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise


def build_path(out: str | os.PathLike) -> Path:
    """The sibling a long job builds a replacement of `out` in: `.<name>.build` (fixed, so that a
    resumed job and every distributed worker find it)."""
    out = Path(out)
    return out.with_name(f".{out.name}.build")


def replacing(out: str | os.PathLike, command: str) -> bool:
    """Whether an interrupted replacement of `out` by `command` waits in its build sibling: resuming
    it needs no second --overwrite (the user gave one when it started)."""
    return (read_marker(build_path(out)) or {}).get("command") == command


def begin_dir(out: str | os.PathLike, command: str, *, continue_existing: bool = False) -> Path:
    """The directory a long job (checked with `check_output_dir`) writes to, created and marked.

    `out` itself when it is absent or empty, or, with `continue_existing` (a resumed run, or a
    pipeline reusing its finished stages), when `command` wrote it; otherwise the build sibling
    (`build_path`), as when a new run replaces an existing `out`. A build sibling an interrupted
    replacement left is continued with `continue_existing` and discarded otherwise. `finish_dir`
    puts the result in place.
    """
    out, build = Path(out), build_path(out)
    if continue_existing and build.is_dir() and (read_marker(build) or {}).get("command") == command:
        log.info("continuing the replacement of %s in %s", out, build)
        return build
    if build.exists():
        log.info("discarding %s, left by an interrupted run", build)
        shutil.rmtree(build)
    empty = not out.is_dir() or not any(p.name != MARKER for p in out.iterdir())
    ours = (read_marker(out) or {}).get("command") == command
    work = out if empty or (continue_existing and ours) else build
    work.mkdir(parents=True, exist_ok=True)
    marker = read_marker(work)
    if marker is None or marker["command"] != command or marker["entries"] is not None:
        write_marker(work, command)  # unfinished: no entry list until finish_dir
    return work


def finish_dir(work: str | os.PathLike, out: str | os.PathLike, command: str) -> Path:
    """Record what `command` wrote in `work` and, when it is a build sibling, swap it in for `out`."""
    work, out = Path(work), Path(out)
    write_marker(work, command, finished=True)
    if work != out:
        swap_dir(work, out)
    return out
