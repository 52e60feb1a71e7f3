"""The timing logic (tensorslim.report.timing) on injected fake clocks and loads: interleaving,
medians, spreads, reruns, refusal on a busy machine, thread choice. No assertion here depends on
how fast this machine is."""

from __future__ import annotations

import statistics

import pytest

from tensorslim.report import timing
from tensorslim.report.timing import Spread, choose_threads, compare, judge, measure_models, speed_note


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLoad:
    """A ForeignLoad stand-in reporting scripted foreign cores, one value per attempt."""

    def __init__(self, values):
        self.values = iter(values)
        self.cores = None

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cores = next(self.values)


def contender(clock: FakeClock, name: str, durations, log: list):
    """A callable whose successive calls take `durations` (cycled) seconds of fake time."""
    durations = list(durations)
    state = {"i": 0}

    def call():
        clock.now += durations[state["i"] % len(durations)]
        state["i"] += 1
        log.append(name)

    return call


def quiet(values=(0.0, 0.0, 0.0)):
    return FakeLoad(values)


def fake_compare(clock: FakeClock, contenders: dict, **overrides):
    """compare() on the fake clock: 7 rounds of 0.1 s, no warm-up, 3 attempts, a quiet 2-core machine."""
    settings = dict(seconds=0.7, rounds=7, warmup=0, attempts=3, load=quiet(), cores=2) | overrides
    return compare(contenders, clock=clock, **settings)


def test_spread_by_hand():
    s = Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.median == 3.0 and s.spread == pytest.approx((4.0 - 2.0) / 3.0)
    assert Spread.of([2.0]).spread == 0.0


def test_steady_timings_are_trusted_and_rounds_alternate():
    clock, calls = FakeClock(), []
    contenders = {
        "teacher": contender(clock, "teacher", [0.1], calls),
        "student": contender(clock, "student", [0.05], calls),
    }
    result = compare(contenders, seconds=0.5, rounds=4, warmup=1, clock=clock, load=quiet(), cores=2)
    assert result.trusted and result.reason == "" and len(result.attempts) == 1
    assert result.speedup("student") == pytest.approx(2.0)
    assert result.result.seconds["teacher"].median == pytest.approx(0.1)
    # warm-up (1 call each), then rounds of 0.5 / 4 s: 1 call of the teacher, 2 (0.125 / 0.05 -> 2) of the student
    rounds = calls[2:]
    assert rounds == (["teacher", "student", "student"] + ["student", "student", "teacher"]) * 2


def test_a_burst_in_one_round_does_not_move_the_median():
    clock, calls = FakeClock(), []
    teacher = [0.1] * 3 + [0.3] + [0.1] * 10  # the 4th call of each (round 3) lands in a burst
    student = [0.05] * 3 + [0.15] + [0.05] * 10
    result = fake_compare(
        clock, {"teacher": contender(clock, "t", teacher, calls), "student": contender(clock, "s", student, calls)}
    )
    assert result.trusted
    assert result.speedup("student") == pytest.approx(2.0)
    assert result.result.seconds["teacher"].median == pytest.approx(0.1)


def test_noisy_rounds_are_rerun_then_refused():
    clock, calls = FakeClock(), []
    noisy_teacher = [0.1, 0.2, 0.1, 0.3, 0.15, 0.1, 0.25]
    noisy_student = [0.05, 0.04, 0.2, 0.05, 0.1, 0.03, 0.06]
    result = fake_compare(
        clock,
        {
            "teacher": contender(clock, "t", noisy_teacher, calls),
            "student": contender(clock, "s", noisy_student, calls),
        },
    )
    assert not result.trusted and len(result.attempts) == 3
    assert result.speedup("student") is None
    assert "busy in all 3 attempts" in result.reason and "spread" in result.reason
    d = result.to_dict()
    assert d["trusted"] is False and d["speedups"]["student"]["median"] is None and d["attempts"] == 3


def test_a_noisy_attempt_then_a_quiet_one_is_trusted():
    clock, calls = FakeClock(), []
    teacher = [0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1] + [0.1] * 7
    student = [0.05] * 14
    result = fake_compare(
        clock, {"teacher": contender(clock, "t", teacher, calls), "student": contender(clock, "s", student, calls)}
    )
    assert len(result.attempts) == 2 and result.attempts[0].problems and result.trusted
    assert result.speedup("student") == pytest.approx(2.0)


def test_steady_but_contended_machine_is_refused_by_the_load_probe():
    """Constant contention slows the many-small-ops student more than the teacher, steadily: the
    spreads look clean, so only the foreign-load probe can catch the biased speed-up."""
    clock, calls = FakeClock(), []
    result = fake_compare(
        clock,
        {"teacher": contender(clock, "t", [0.12], calls), "student": contender(clock, "s", [0.2], calls)},
        attempts=2,
        load=FakeLoad([1.6, 1.7]),
    )
    assert not result.trusted and result.speedup("student") is None
    assert "other processes used 1.70 of 2 cores" in result.reason


def test_two_runs_agree_within_15_percent_or_the_busy_one_refuses():
    """The issue's done-when, on fake timings: a quiet run, and a busy run whose bursts hit whichever
    contender is running; interleaving keeps its median ratio close, or it says it could not measure."""

    def run(teacher, student, load):
        clock = FakeClock()
        return fake_compare(
            clock,
            {"teacher": contender(clock, "t", teacher, []), "student": contender(clock, "s", student, [])},
            load=FakeLoad(load),
        )

    quiet_run = run([0.1], [0.07], [0.0, 0.0, 0.0])
    burst = [1.0, 1.0, 2.5, 1.0, 1.0, 1.0, 2.5]  # every 3rd/7th round of both contenders in a burst
    busy_run = run([0.1 * b for b in burst], [0.07 * b for b in reversed(burst)], [0.1, 0.1, 0.1])
    assert quiet_run.trusted
    speedups = [r.speedup("student") for r in (quiet_run, busy_run)]
    assert speedups[1] is None or abs(speedups[1] / speedups[0] - 1) <= 0.15
    very_busy = run([0.1 * b for b in burst], [0.07 * b * b for b in burst], [1.5, 1.5, 1.5])
    assert very_busy.speedup("student") is None and "could" not in very_busy.reason  # the caller words the refusal
    assert "Could not measure" in speed_note(
        {**very_busy.to_dict(), "device": "cpu", "dtype": "float32", "batch_size": 32, "seq_len": 128, "threads": 2}
    )


def test_self_timed_contenders_count_what_they_return():
    clock = FakeClock()

    def slow_start(seconds):
        def call():
            clock.now += 5.0  # start-up that must not count
            return seconds

        return call

    result = compare(
        {"one": slow_start(2.0), "two": slow_start(1.0)}, rounds=3, warmup=0, clock=clock, load=quiet(), cores=2
    )
    assert result.result.seconds["one"].median == 2.0 and result.speedup("two") == pytest.approx(2.0)


def test_judge_lists_each_problem():
    times = {"a": [1.0, 1.0, 1.0, 1.0], "b": [0.5, 0.5, 1.0, 0.25]}
    attempt = judge(times, foreign_cores=0.5, cores=2, max_spread=0.1, max_foreign_cores=0.25)
    assert [p.split(":")[0] for p in attempt.problems] == ["b", "speed-up of b", "other processes used 0.50 of 2 cores"]
    assert attempt.speedups["b"].median == pytest.approx(statistics.median([2.0, 2.0, 1.0, 4.0]))
    assert judge(times, None, 2, max_spread=2.0).problems == []  # no probe (not Linux): spreads decide


def test_thread_choice_never_oversubscribes_by_default():
    threads, warnings = choose_threads(None, 8, 2)
    assert threads == 2 and "using 2" in warnings[0]
    assert choose_threads(None, 2, 4) == (2, [])
    threads, warnings = choose_threads(6, 2, 2)
    assert threads == 6 and "oversubscribe" in warnings[0] and "--threads 2" in warnings[0]
    assert choose_threads(1, 2, 2) == (1, [])


def test_available_cores_and_the_load_probe_on_this_machine():
    cores = timing.available_cores()
    assert 1 <= cores <= (timing.os.cpu_count() or cores)
    with timing.ForeignLoad() as probe:
        sum(range(100000))
    assert probe.cores is None or probe.cores >= 0.0


def test_measure_models_reports_a_verdict_and_restores_threads():
    import torch
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(vocab_size=1100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    before = torch.get_num_threads()
    speed = measure_models(
        {"teacher": model, "same": model}, batch_size=2, seq_len=8, seconds=0.05, threads=1, rounds=3, attempts=1
    )
    assert torch.get_num_threads() == before
    assert speed["threads"] == 1 and speed["baseline"] == "teacher" and set(speed["seconds"]) == {"teacher", "same"}
    assert set(speed["speedups"]) == {"same"}
    assert (speed["speedups"]["same"]["median"] is None) == (not speed["trusted"])
    assert speed["sequences_per_second"]["teacher"] == pytest.approx(2 / speed["seconds"]["teacher"]["median"])
