"""The `tensorslim` command. Each subcommand lives in its own module here and only parses flags
and calls the Python API; `COMMANDS` lists them in the order `--help` shows them.

`main` turns the failures a user can cause or fix (TensorslimError, a full disk, a read-only path,
running out of memory) into one message and exit code 2, and SIGINT/SIGTERM into exit code 130 with
a hint that is true for the command; `--debug` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
import sys

from ..errors import TensorslimError

COMMANDS = [
    "pregenerate",
    "decompose",
    "distill",
    "finetune",
    "augment",
    "evaluate",
    "export",
    "report",
    "demo",
    "sweep",
]

#: errno values meaning the output cannot be written where it was asked to go.
DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is larger than allowed",
}
#: How libraries that do their own I/O (safetensors, torch.save) report the same failures.
DISK_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "Read-only file system": errno.EROFS,
    "os error 30": errno.EROFS,
    "file write failed": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Permission denied": errno.EACCES,
}

log = logging.getLogger("tensorslim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorslim",
        description="Compress BERT-family encoders by cross-layer tensor decomposition and distillation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error as well")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity(level if level != logging.INFO else logging.WARNING)


def _terminate(signum, _frame):
    """SIGTERM stops a command as Ctrl-C does (KeyboardInterrupt), so that it cleans up after itself."""
    raise KeyboardInterrupt


def disk_error(exc: BaseException) -> tuple[str, str] | None:
    """(what happened, where) when `exc` means the output could not be written, else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        return f"{exc.strerror} ({DISK_ERRORS[exc.errno]})", str(exc.filename or "the output")
    text = str(exc)
    for needle, code in DISK_MESSAGES.items():
        if needle in text and (not isinstance(exc, OSError) or exc.errno is None):
            return f"{needle} ({DISK_ERRORS[code]})", text.splitlines()[0][:300] if text else "the output"
    return None


def interrupted_hint(args: argparse.Namespace) -> str:
    """What to do after an interrupt, true for the command that was interrupted."""
    if getattr(args, "resume", None) is not None:
        extra = " in place of --overwrite" if getattr(args, "overwrite", False) else ""
        return f"finished work is kept; rerun the same command with --resume{extra} to continue"
    if args.command in ("demo", "sweep"):
        return "finished stages are kept; rerun the same command to continue from them"
    return "nothing was written; rerun the command to start again"


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _terminate)
    args = None
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.extra = rest
        setup_logging(args.verbose, args.quiet)
        args.func(args)
    except TensorslimError as exc:
        log.error("%s", exc, exc_info=args is not None and args.debug)
        return 2
    except KeyboardInterrupt as exc:
        detail = f"{exc}; " if str(exc) and "--resume" not in str(exc) else ""
        hint = interrupted_hint(args) if args is not None else "nothing was written"
        log.error("interrupted: %s%s", detail, hint, exc_info=args is not None and args.debug)
        return 130
    except MemoryError:
        log.error(
            "out of memory\n  fix: lower --batch-size (or the sequence length), or use a larger machine",
            exc_info=args is not None and args.debug,
        )
        return 2
    except Exception as exc:
        problem = disk_error(exc)
        if problem is None:
            raise  # not a user error: the traceback is for a bug report
        what, where = problem
        fix = (
            "check the permissions of that path, or choose a writable output path"
            if "permission" in what
            else "free disk space or choose a writable output path"
        )
        verb = "access" if "permission" in what else "write"
        log.error(
            "cannot %s %s: %s\n  fix: %s; nothing half-written was kept",
            verb,
            where,
            what,
            fix,
            exc_info=args is not None and args.debug,
        )
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
