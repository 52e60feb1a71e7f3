"""Where shards are processed: in this process (one worker) or in a forkserver process pool.

The main process reads the corpus and keeps at most 2 x workers shards in flight, so memory is
about workers x shard size, independent of the corpus size. Pool workers ignore Ctrl-C (the main
process decides) and exit when the main process dies (see `shard.init_worker`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ...env import DATA_WORKER_ENV
from ...errors import TensorslimError
from ...signals import GracefulStop
from .shard import init_worker, process_shard
from .vocab import Vocab


def run_shards(
    tasks: Iterable[tuple], vocab: Vocab, workers: int, stop: GracefulStop, finish: Callable[[dict], None]
) -> bool:
    """`process_shard` on every task (shard, documents, config, out); `finish` gets each record as
    the shard completes. Returns True when `stop` ended the run early (the shards in flight finish
    first); any exception ends the pool's workers at once."""
    if workers == 1:
        init_worker(vocab, in_pool=False)
        for task in tasks:
            if stop.requested:
                return True
            finish(process_shard(task))
        return False
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=init_worker, initargs=(vocab, True))
    in_flight, stopped = set(), False
    try:
        for task in tasks:
            if stop.requested:
                stopped = True
                break
            while len(in_flight) >= 2 * workers:
                in_flight = _collect(in_flight, finish)
            in_flight.add(executor.submit(process_shard, task))
        while in_flight:
            in_flight = _collect(in_flight, finish)
    except BaseException as exc:
        executor.shutdown(wait=False, cancel_futures=True)
        for process in multiprocessing.active_children():  # the pool's workers: end their shards now
            if process not in before:
                process.terminate()
        if isinstance(exc, BrokenProcessPool):
            raise TensorslimError(
                "a worker process died (killed, or out of memory); finished shards are kept",
                "rerun the same command with --resume, with fewer --workers or a smaller "
                "--docs-per-shard if memory ran out",
            ) from None
        raise
    executor.shutdown()
    return stopped


def _collect(in_flight: set, finish) -> set:
    """Wait (polling, so signals are handled) until some shards finish; record them; return the rest."""
    while True:
        finished, pending = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
        if finished:
            break
    for future in finished:
        finish(future.result())
    return pending


def pool_context():
    """forkserver where available: the server imports the worker module once and forks workers from
    it, which never inherit the parent's threads. The server starts with TENSORSLIM_DATA_WORKER=1, so
    it skips the package's torch/transformers import (workers need tokenizers and pyarrow only) and a
    pool is ready in well under a second. Elsewhere, spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([process_shard.__module__])
    previous = os.environ.get(DATA_WORKER_ENV)
    os.environ[DATA_WORKER_ENV] = "1"
    try:
        forkserver.ensure_running()  # the server (and every worker) takes the environment from here
    finally:
        if previous is None:
            del os.environ[DATA_WORKER_ENV]
        else:
            os.environ[DATA_WORKER_ENV] = previous
    return context
