"""The `tensorslim` command. Each subcommand lives in its own module here and only parses flags
and calls the Python API; `COMMANDS` lists them in the order `--help` shows them."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from ..errors import TensorslimError

COMMANDS = ["pregenerate", "decompose", "distill", "finetune", "augment", "evaluate", "report", "demo", "sweep"]

log = logging.getLogger("tensorslim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorslim",
        description="Compress BERT-family encoders by cross-layer tensor decomposition and distillation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity(level if level != logging.INFO else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.extra = rest
    setup_logging(args.verbose, args.quiet)
    try:
        args.func(args)
    except TensorslimError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            log.error("cannot write %s: %s\n  fix: free disk space or choose a writable output path",
                      exc.filename or "output", exc.strerror)
            return 2
        raise
    except KeyboardInterrupt:
        log.error("interrupted; finished work is kept, rerun the same command with --resume to continue")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
