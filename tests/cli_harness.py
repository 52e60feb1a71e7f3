"""Running the real `tensorslim` CLI in subprocesses, fast, and checking what it left behind.

`CliRunner` starts one Python process that imports the CLI once (torch and transformers take 3-4 s)
and forks a child per command: the child runs ``tensorslim.cli`` as ``__main__`` exactly as
``python -m tensorslim.cli ARGS`` does (its own process and session, stdout and stderr to files,
an uncaught exception printed as a traceback with exit code 1), so a case costs what the command
itself costs. `run_plain` is the ordinary ``python -m tensorslim.cli`` for the cases that must not
share anything (and to show both give the same result).

`snapshot` records a directory tree's bytes (hidden files, empty directories and symlinks
included): every case compares its inputs and earlier outputs before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}

_ZYGOTE = r"""
import json, os, runpy, signal, subprocess, sys, traceback
import importlib
import tensorslim.cli  # the expensive imports, once (and those the commands make lazily)
for name in ("transformers.trainer", "datasets", "tensorslim.train", "tensorslim.pipeline.demo",
             "tensorslim.pipeline.sweep", "tensorslim.data.augment", "tensorslim.data.pregenerate",
             "tensorslim.report.summary", "tensorslim.report.render", "tensorslim.compress.api"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        # as launched from a terminal: a runner started in the background of a non-interactive shell
        # (CI scripts) inherits SIGINT ignored, which would make the signal cases meaningless
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = 1
        try:
            if request["setup"]:  # e.g. a mount, inside the runner's namespace
                subprocess.run(["sh", "-c", request["setup"]], check=True)
            os.chdir(request["cwd"])
            os.environ.update(request["env"])
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0), os.dup2(out, 1), os.dup2(err, 2)
            sys.argv = ["tensorslim", *request["argv"]]
            try:
                runpy.run_module("tensorslim.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(), sys.stderr.flush()
                if request["after"]:  # e.g. list a tmpfs that only this namespace sees
                    with open(request["after_out"], "w") as listing:
                        subprocess.run(["sh", "-c", request["after"]], stdout=listing)
            finally:
                os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-4000:]}"


class CliRunner:
    """One pre-imported Python process that forks a child per CLI call (see the module doc)."""

    def __init__(self, prefix: tuple[str, ...] = ()):
        """`prefix`: a wrapper for the runner process, e.g. ("unshare", "-rm") for its own user and
        mount namespace, in which each call's `setup` may mount file systems."""
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **ENV},
            text=True,
            start_new_session=True,
        )
        self.tmp = tempfile.TemporaryDirectory(prefix="cli-harness-")

    def start(
        self, args: list[str], cwd: Path | None = None, env: dict | None = None, setup: str = "", after: str = ""
    ) -> tuple[int, Path, Path]:
        """Start `tensorslim ARGS` (after the shell command `setup`; `after` runs when it ended, its
        output in `self.after_output`); return (pid, stdout file, stderr file). Finish with `wait`."""
        n = len(os.listdir(self.tmp.name))
        out, err = Path(self.tmp.name) / f"{n}.out", Path(self.tmp.name) / f"{n}.err"
        self.after_output = Path(self.tmp.name) / f"{n}.after"
        request = {
            "argv": [str(a) for a in args],
            "cwd": str(cwd or os.getcwd()),
            "env": env or {},
            "stdout": str(out),
            "stderr": str(err),
            "setup": setup,
            "after": after,
            "after_out": str(self.after_output),
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        return pid, out, err

    def wait(self, started: tuple[int, Path, Path]) -> Result:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the CLI harness process died")
        code = json.loads(line)["status"]
        _, out, err = started
        return Result(code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def __call__(
        self, *args, cwd: Path | None = None, env: dict | None = None, setup: str = "", after: str = ""
    ) -> Result:
        return self.wait(self.start(list(args), cwd, env, setup, after))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.tmp.cleanup()


def run_plain(args: list[str], cwd: Path | None = None, timeout: float = 600, prefix: list[str] = ()) -> Result:
    """`python -m tensorslim.cli ARGS` in a fresh interpreter (after `prefix`, e.g. an unshare wrapper)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "tensorslim.cli", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def interrupt_when(
    runner: CliRunner, args: list[str], ready, sig: int = signal.SIGTERM, delay: float = 0, timeout: float = 300
) -> tuple[Result, float]:
    """Start `args`; once `ready(stderr file)` holds, wait `delay` s and send `sig`. Return (result,
    seconds from the signal to the exit). Fails when the command ended before it was signalled."""
    started = runner.start(args)
    pid, _, err = started
    deadline = time.monotonic() + timeout
    try:
        while not ready(err) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        sent = time.monotonic()
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        result = runner.wait(started)
    assert result.code != 0, f"the command ended before the signal:\n{result}"
    return result, time.monotonic() - sent


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: what it is} for everything under `root` (and `root` itself): file bytes as
    SHA-256, directories, symlinks with their target. Equal snapshots mean an untouched tree."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return {".": "absent"}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    found = {".": "dir"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_clean_failure(result: Result, message: str | tuple[str, ...], code: int = 2) -> None:
    """Exit `code`, every `message` part in stderr, no Python traceback."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.stderr, str(result)
    for part in (message,) if isinstance(message, str) else message:
        assert part.lower() in result.stderr.lower(), f"{part!r} not in the message:\n{result}"
