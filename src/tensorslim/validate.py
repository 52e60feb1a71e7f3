"""Checks every command runs on its arguments before the first expensive step.

The lowest layer beside `errors` and `io`: numbers in range, devices that exist, output files that
would not clobber a user's file, weights without NaN. Each failure is a TensorslimError naming
the flag, the value and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import TensorslimError
from .io import check_not_input, check_writable


def check_at_least(flag: str, value: float | None, low: float) -> None:
    """`value` (None: unset) must be finite and >= `low`."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise TensorslimError(f"{flag} {value} is out of range", f"pass {flag} {low} or more")


def check_above(flag: str, value: float | None, low: float) -> None:
    """`value` (None: unset) must be finite and > `low`."""
    if value is not None and not (math.isfinite(value) and value > low):
        raise TensorslimError(f"{flag} {value} is out of range", f"pass {flag} greater than {low:g}")


def check_fraction(flag: str, value: float | None, *, open_low: bool = False, open_high: bool = False) -> None:
    """`value` (None: unset) must lie in [0, 1] (ends excluded as asked)."""
    if value is None:
        return
    if not (
        math.isfinite(value) and (0 < value if open_low else 0 <= value) and (value < 1 if open_high else value <= 1)
    ):
        raise TensorslimError(f"{flag} {value} is out of range", f"pass {flag} between 0 and 1")


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """A torch device string that exists on this machine ("auto"/None: left to the command)."""
    if device is None or device == "auto":
        return device
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise TensorslimError(f"unknown device {flag} {device!r}", "use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise TensorslimError(
                f"{flag} {device} requested but no CUDA GPU is available on this machine", f"use {flag} cpu (or auto)"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TensorslimError(
                f"{flag} {device}: this machine has {torch.cuda.device_count()} GPU(s)",
                f"use {flag} cuda:0 to cuda:{torch.cuda.device_count() - 1}",
            )
    elif parsed.type == "mps" and not (torch.backends.mps.is_available()):
        raise TensorslimError(f"{flag} {device} requested but MPS is not available", f"use {flag} cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise TensorslimError(f"unsupported device {flag} {device!r}", "use cpu, cuda or auto")
    return device


def check_existing_dir(path: str | os.PathLike | None, flag: str) -> None:
    if path is not None and not Path(path).is_dir():
        raise TensorslimError(
            f"{flag} {path} is not a directory" if Path(path).exists() else f"{flag} {path} does not exist",
            f"pass the directory for {flag}",
        )


def check_existing_file(path: str | os.PathLike | None, flag: str) -> None:
    if path is not None and not Path(path).is_file():
        raise TensorslimError(
            f"{flag} {path} is a directory" if Path(path).is_dir() else f"{flag} {path} does not exist",
            f"pass an existing file for {flag}",
        )


def check_output_file(path: str | os.PathLike, flag: str, *, inputs: Iterable = (), ours: Iterable[str] = ()) -> Path:
    """An output file that may be (re)written: not a directory, not an input, and, when it exists,
    a JSON object with the keys `ours` (a file an earlier run of the same command wrote)."""
    path = Path(path)
    if path.is_dir():
        raise TensorslimError(f"{flag} {path} is a directory", f"pass a file name for {flag}")
    check_not_input(path, [p for p in inputs if p is not None and Path(p).is_file()], flag)
    check_writable(path)
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            mine = isinstance(data, dict) and all(key in data for key in ours)
        except (OSError, ValueError):
            mine = False
        if not mine:
            raise TensorslimError(
                f"{flag} {path} exists and was not written by this command",
                f"choose another {flag}, or move {path} away",
            )
    return path


def check_finite_weights(model_dir: str | os.PathLike) -> None:
    """Refuse a model whose safetensors weights hold NaN or infinite values (naming the tensor)."""
    import torch
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                        bad = int((~torch.isfinite(tensor)).sum())
                        raise TensorslimError(
                            f"{file} holds {bad} NaN or infinite value(s) in {name}",
                            "the model is damaged (or diverged in training): use an earlier checkpoint or re-save it",
                        )
        except SafetensorError as exc:
            raise TensorslimError(
                f"cannot load the weights in {file}: {exc}",
                "the weights file is truncated or corrupt; re-save the model",
            ) from None
