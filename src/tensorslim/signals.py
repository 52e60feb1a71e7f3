"""`GracefulStop`: SIGINT/SIGTERM ask a long job to stop at its next safe point.

One class for every long job: pregenerate (between shards), augment (between chunks) and the
training commands (after an optimizer step, with a checkpoint; `train.runner.StopTraining` is its
Trainer callback and makes DDP workers agree). Imports nothing but the standard library, so data
workers load it without torch.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Self

log = logging.getLogger(__name__)


class GracefulStop:
    """While active, the first SIGINT/SIGTERM sets `signal` and the job stops at its next safe point;
    a second one restores the previous handlers and raises KeyboardInterrupt (stop at once).

    Use it as a context manager around the whole job (`with GracefulStop("...") as stop:` then check
    `stop.requested` at safe points), or `install()` / `restore()` it around a part of one. Outside
    the main thread, where Python cannot catch signals, it is active but never set.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, safe_point: str = "stopping at the next safe point"):
        self.safe_point = safe_point
        self.signal: int | None = None
        self.active = False
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        """Whether a signal has asked the job to stop."""
        return self.signal is not None

    def __enter__(self) -> Self:
        self.signal = None
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def install(self) -> None:
        """Start catching the signals (the previous handlers are kept for `restore`)."""
        self.active = True
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self) -> None:
        """Give the signals back to the handlers they had before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self.active = False

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: %s (send it again to stop at once)", signal.Signals(signum).name, self.safe_point)
