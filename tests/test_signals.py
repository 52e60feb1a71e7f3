"""`GracefulStop`: the one SIGINT/SIGTERM handler of every long job (real signals sent to this process)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tensorslim.signals import GracefulStop


def test_first_signal_asks_to_stop_second_stops_at_once_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in GracefulStop.SIGNALS}
    with GracefulStop("finishing the current unit") as stop:
        assert stop.active and not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert {s: signal.getsignal(s) for s in GracefulStop.SIGNALS} == before  # restored by the second
    assert not stop.active
    assert {s: signal.getsignal(s) for s in GracefulStop.SIGNALS} == before


def test_leaving_the_block_restores_the_previous_handlers_and_a_new_block_starts_clear():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        stop = GracefulStop()
        with stop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and seen == []
        with stop:
            assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_it_leaves_signals_alone():
    before = signal.getsignal(signal.SIGINT)
    result = {}

    def worker():
        with GracefulStop() as stop:
            result["active"], result["handler"] = stop.active, signal.getsignal(signal.SIGINT)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result == {"active": True, "handler": before}
