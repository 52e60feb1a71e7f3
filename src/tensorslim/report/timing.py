"""Speed measurements that survive a busy machine: interleaved rounds, medians, spreads, a verdict.

`compare(contenders)` times several callables in alternating rounds (A B C, then C B A, ...), so a
burst of other work lands on all of them rather than on whichever ran at that moment. Each
contender's time per call is the median over rounds, its spread the interquartile range over the
median. The speed-up of a contender over the first one (the baseline) is the median of its
per-round ratios, each from two timings taken moments apart.

A measurement is trusted only when every spread (times and ratios) is at most `max_spread` and other
processes used at most `max_foreign_cores` of the cores this process may run on (from /proc/stat,
minus this process's own CPU time). Otherwise it is repeated, up to `attempts` times in all; if it
is still noisy, `Comparison.speedup()` returns None and `Comparison.reason` says why, so callers
print "could not measure" instead of a number. Design and thresholds: docs/report.md.

`measuring_threads()` picks the torch thread count (never more than the cores available to the
process) and warns when a requested count would oversubscribe them; `measure_models()` applies all
of this to the bare encoders of transformers models.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: Spread (interquartile range / median of the round times or ratios) above which a round set is noisy.
MAX_SPREAD = 0.10
#: Average cores used by other processes, during the measurement, above which the machine is busy.
MAX_FOREIGN_CORES = 0.25
BUSY_ADVICE = "rerun when the machine is idle (stop other jobs; see docs/report.md)"


# ----------------------------------------------------------------------------- cores and threads


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_quota() -> float | None:
    """cgroup v2 cpu.max or v1 cfs quota / period in cores; None when unlimited or unknown."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def choose_threads(requested: int | None, current: int, cores: int) -> tuple[int, list[str]]:
    """(threads to use, warnings): `requested` if given, else `current` capped at `cores`."""
    if requested is not None:
        if requested > cores:
            return requested, [
                f"{requested} threads on {cores} available cores oversubscribe them: timings will "
                f"be slow and noisy (pass --threads {cores} or fewer)"
            ]
        return requested, []
    if current > cores:
        return cores, [f"torch would use {current} threads on {cores} available cores; using {cores}"]
    return current, []


@contextmanager
def measuring_threads(requested: int | None = None, probe_seconds: float = 0.5) -> Iterator[dict]:
    """Set torch's thread count for a measurement (see choose_threads), restore it afterwards.

    Before that, watches the machine for `probe_seconds` and warns when other processes keep cores
    busy. Yields {"threads", "cores", "warnings"}; each warning is also logged."""
    import torch

    before, cores = torch.get_num_threads(), available_cores()
    threads, warnings = choose_threads(requested, before, cores)
    if probe_seconds > 0:
        with ForeignLoad() as probe:
            time.sleep(probe_seconds)
        if probe.cores is not None and probe.cores > MAX_FOREIGN_CORES:
            warnings.append(
                f"other processes are using {probe.cores:.2f} of the {cores} cores available to this "
                "one: timings will be noisy or refused"
            )
    for warning in warnings:
        log.warning(warning)
    torch.set_num_threads(threads)
    try:
        yield {"threads": threads, "cores": cores, "warnings": warnings}
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- other processes


def _busy_ticks(cpus: set[int] | None) -> int | None:
    """Busy clock ticks (user, nice, system, irq, softirq, steal) summed over `cpus`, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
        total += user + nice + system + irq + softirq + steal
    return total


class ForeignLoad:
    """Average cores used by other processes (and a hypervisor's steal) on this process's cores while
    the `with` block runs; `cores` is None where /proc/stat is unavailable."""

    def __init__(self):
        try:
            self._cpus: set[int] | None = os.sched_getaffinity(0)
        except AttributeError:
            self._cpus = None
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cores: float | None = None

    def __enter__(self) -> ForeignLoad:
        self._start = (_busy_ticks(self._cpus), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        ticks, own, wall = _busy_ticks(self._cpus), time.process_time(), time.perf_counter()
        if ticks is None or self._start[0] is None or wall <= self._start[2]:
            return
        busy = (ticks - self._start[0]) / self._hz - (own - self._start[1])
        self.cores = max(0.0, busy / (wall - self._start[2]))


# ----------------------------------------------------------------------------- comparing contenders


@dataclass(frozen=True)
class Spread:
    """Median and relative interquartile range of a set of per-round values."""

    median: float
    spread: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        median = statistics.median(values)
        if len(values) < 2 or median == 0:
            return cls(median, 0.0, tuple(values))
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, (q3 - q1) / abs(median), tuple(values))


@dataclass(frozen=True)
class Attempt:
    """One set of interleaved rounds: seconds per call and speed-ups over the baseline, with problems."""

    seconds: dict[str, Spread]
    speedups: dict[str, Spread]
    foreign_cores: float | None
    problems: list[str]


@dataclass(frozen=True)
class Comparison:
    """All attempts of `compare`; the last one is the result."""

    baseline: str
    attempts: list[Attempt]
    cores: int
    limits: dict = field(default_factory=lambda: {"max_spread": MAX_SPREAD, "max_foreign_cores": MAX_FOREIGN_CORES})

    @property
    def result(self) -> Attempt:
        return self.attempts[-1]

    @property
    def trusted(self) -> bool:
        return not self.result.problems

    @property
    def reason(self) -> str:
        """Why the measurement is not trusted ('' when it is)."""
        if self.trusted:
            return ""
        n = len(self.attempts)
        tried = f"all {n} attempts" if n > 1 else "the only attempt"
        return f"the machine was busy in {tried} (last: {'; '.join(self.result.problems)})"

    def speedup(self, name: str) -> float | None:
        """Median speed-up of `name` over the baseline (baseline seconds / its seconds), None if untrusted."""
        return self.result.speedups[name].median if self.trusted else None

    def to_dict(self) -> dict:
        r = self.result
        return {
            "baseline": self.baseline,
            "trusted": self.trusted,
            "reason": self.reason,
            "attempts": len(self.attempts),
            "cores": self.cores,
            "foreign_cores": r.foreign_cores,
            **self.limits,
            "seconds": {
                k: {"median": v.median, "spread": v.spread, "rounds": list(v.values)} for k, v in r.seconds.items()
            },
            "speedups": {
                k: {"median": v.median if self.trusted else None, "spread": v.spread} for k, v in r.speedups.items()
            },
        }


def _calls_per_round(fn: Callable[[], object], warmup: int, round_seconds: float, clock) -> int:
    """Run `warmup` calls; enough calls to fill `round_seconds` judging by the last one (1 without warm-up)."""
    elapsed = None
    for _ in range(warmup):
        t0 = clock()
        returned = fn()
        elapsed = returned if isinstance(returned, float) else clock() - t0
    if not elapsed or elapsed <= 0:
        return 1
    return max(1, round(round_seconds / elapsed))


def _rounds(
    contenders: Mapping[str, Callable[[], object]], calls: dict[str, int], rounds: int, clock
) -> dict[str, list[float]]:
    """Seconds per call of every contender in each round, alternating the order round by round."""
    names, times = list(contenders), {name: [] for name in contenders}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn, own, t0 = contenders[name], 0.0, clock()
            for _ in range(calls[name]):
                returned = fn()
                own += returned if isinstance(returned, float) else 0.0
            times[name].append((own or clock() - t0) / calls[name])
    return times


def judge(
    times: dict[str, list[float]],
    foreign_cores: float | None,
    cores: int,
    max_spread: float = MAX_SPREAD,
    max_foreign_cores: float = MAX_FOREIGN_CORES,
) -> Attempt:
    """Medians, spreads and speed-ups of one attempt's round times (the first contender is the baseline),
    with the problems that make it untrustworthy."""
    baseline, *others = list(times)
    seconds = {name: Spread.of(values) for name, values in times.items()}
    speedups = {name: Spread.of([b / t for b, t in zip(times[baseline], times[name], strict=True)]) for name in others}
    problems = [f"{name}: round times spread {s.spread:.0%}" for name, s in seconds.items() if s.spread > max_spread]
    problems += [
        f"speed-up of {name}: rounds spread {s.spread:.0%}" for name, s in speedups.items() if s.spread > max_spread
    ]
    if foreign_cores is not None and foreign_cores > max_foreign_cores:
        problems.append(f"other processes used {foreign_cores:.2f} of {cores} cores")
    return Attempt(seconds, speedups, foreign_cores, problems)


def compare(
    contenders: Mapping[str, Callable[[], object]],
    *,
    seconds: float = 3.0,
    rounds: int = 7,
    warmup: int = 1,
    attempts: int = 3,
    max_spread: float = MAX_SPREAD,
    max_foreign_cores: float = MAX_FOREIGN_CORES,
    clock: Callable[[], float] = time.perf_counter,
    load: Callable[[], ForeignLoad] = ForeignLoad,
    cores: int | None = None,
) -> Comparison:
    """Time `contenders` ({name: no-argument callable}; the first is the baseline) in interleaved rounds.

    Each attempt spends about `seconds` on each contender, in `rounds` rounds of equal length. A
    contender may return a float: the seconds it measured itself (for work with set-up that should
    not count, like a fresh process); otherwise the wall time of the call counts. Noisy attempts are
    repeated, up to `attempts` in all. `clock` and `load` are injectable for tests.
    """
    if len(contenders) < 1 or rounds < 1 or attempts < 1:
        raise ValueError("compare needs at least one contender, one round and one attempt")
    cores = cores or available_cores()
    done: list[Attempt] = []
    calls = None
    for attempt in range(attempts):
        if calls is None:  # warm up (and calibrate) once; later attempts reuse the calls per round
            calls = {name: _calls_per_round(fn, warmup, seconds / rounds, clock) for name, fn in contenders.items()}
        with load() as probe:
            times = _rounds(contenders, calls, rounds, clock)
        done.append(judge(times, probe.cores, cores, max_spread, max_foreign_cores))
        if not done[-1].problems:
            break
        log.warning("timing attempt %d of %d was noisy: %s", attempt + 1, attempts, "; ".join(done[-1].problems))
    limits = {"max_spread": max_spread, "max_foreign_cores": max_foreign_cores}
    return Comparison(next(iter(contenders)), done, cores, limits)


# ----------------------------------------------------------------------------- transformers encoders


def encoder_batch(model, batch_size: int, seq_len: int, device: str = "cpu") -> Callable[[], None]:
    """A callable running the bare encoder (base model, eval, fp32, inference mode) on one random batch."""
    import torch

    encoder = model.base_model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            encoder(input_ids=ids, attention_mask=mask)
        sync()

    return run


def measure_models(
    models: Mapping[str, object],
    batch_size: int = 32,
    seq_len: int = 128,
    seconds: float = 3.0,
    device: str = "cpu",
    threads: int | None = None,
    **compare_kwargs,
) -> dict:
    """Sequences per second of each model's bare encoder, interleaved; speed-ups over the first model.

    `compare_kwargs` go to `compare`. Returns speed_record(...)."""
    with measuring_threads(threads) as plan:
        calls = {name: encoder_batch(model, batch_size, seq_len, device) for name, model in models.items()}
        result = compare(calls, seconds=seconds, cores=plan["cores"], **compare_kwargs)
    if not result.trusted:
        log.warning("could not measure the speed-up: %s", result.reason)
    return speed_record(result, batch_size, seq_len, device, plan["threads"], plan["warnings"])


def speed_record(
    result: Comparison, batch_size: int, seq_len: int, device: str, threads: int, warnings: list[str]
) -> dict:
    """Comparison.to_dict() of encoder batches plus the settings, the warnings and
    {"sequences_per_second": {name: batch_size / median seconds per batch}} (JSON-able)."""
    out = result.to_dict()
    out.update(
        batch_size=batch_size,
        seq_len=seq_len,
        device=str(device),
        dtype="float32",
        threads=threads,
        warnings=list(warnings),
        sequences_per_second={k: batch_size / v["median"] for k, v in out["seconds"].items()},
    )
    return out


def speed_note(speed: Mapping) -> str:
    """One sentence on how `speed` (a measure_models dict) was measured, or why it could not be."""
    how = (
        f"{speed['device']}, {speed['dtype']}, batch {speed['batch_size']}, sequence length {speed['seq_len']}, "
        f"{speed['threads']} threads on {speed['cores']} cores, median of interleaved rounds"
    )
    if speed["trusted"]:
        return f"Speed measured on {how}; every spread within {speed['max_spread']:.0%}."
    return f"Could not measure the speed on {how}: {speed['reason']}; {BUSY_ADVICE}."
