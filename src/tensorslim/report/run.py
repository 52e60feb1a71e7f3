"""The run a report is made from, as typed dataclasses: `parse_run(dict) -> Run`.

A run is JSON-able (saved and re-rendered later), so it arrives as a dict; pydantic checks every key
the report reads, with its type, and `parse_run` turns the first problem into a TensorslimError
naming its full location, e.g. `run['students'][0]['report']['parameters']['encoder']`. Keys the
report does not read are ignored. The contract, key by key: docs/report.md.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from ..errors import TensorslimError

Int = Annotated[int, Strict()]  # not bool, not "12"
Number = Annotated[float, Strict()]  # int or float, not bool
Text = Annotated[str, Strict()]
PathText = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v), Strict()]

CONTRACT = "see the run contract in docs/report.md"


@dataclass(frozen=True)
class Parameters:
    """Parameter counts by part (tensorslim.report.measure.count_parameters)."""

    embeddings: Int
    encoder: Int
    pooler: Int
    head: Int
    total: Int
    encoder_factors: Int | None = None
    encoder_dense: Int | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What `tensorslim.report.summary.describe` says about one model."""

    parameters: Parameters
    flops_per_token: Number
    model_type: Text = "n/a"


@dataclass(frozen=True)
class Decomposition:
    """The decomposition.json of a student (tensorslim.modeling.convert.decompose)."""

    method: Text
    rank: Int
    slots: list[Text]
    relative_error: Number
    relative_error_per_layer_slot: list[list[Number]]  # layers x slots
    spectra: dict[Text, list[Number]]
    layer_rank: Int | None = None
    ops: Text = "all"
    decomposed_weights: dict[Text, Number] | None = None
    seconds: dict[Text, Number] | None = None


@dataclass(frozen=True)
class Teacher:
    path: PathText
    dev: dict[Text, Any]  # dev metrics; run.metric must be a number or None
    report: ModelFacts


@dataclass(frozen=True)
class Student(Teacher):
    name: Text
    decomposition: Decomposition
    log_history: dict[Text, list[dict[Text, Any]]] | None = None  # Trainer log_history per stage


@dataclass(frozen=True)
class Stage:
    name: Text
    seconds: Number
    path: PathText | None = None


@dataclass(frozen=True)
class Rounds:
    median: Number | None
    spread: Number


@dataclass(frozen=True)
class Speed:
    """An interleaved measurement (tensorslim.report.timing.measure_models) of the teacher and students."""

    trusted: bool
    reason: Text
    sequences_per_second: dict[Text, Number]
    seconds: dict[Text, Rounds]
    speedups: dict[Text, Rounds]
    batch_size: Int
    seq_len: Int
    device: Text
    dtype: Text
    threads: Int
    cores: Int
    max_spread: Number
    attempts: Int = 1
    warnings: list[Text] = Field(default_factory=list)


@dataclass(frozen=True)
class Memory:
    """Peak resident memory of one model in one engine, in MiB (tensorslim.report.serving.peak_memory)."""

    peak_mb: Number | None = None
    loaded_mb: Number | None = None
    how: Text = ""
    reason: Text = ""  # why it could not be measured


@dataclass(frozen=True)
class EngineCell:
    """One model in one engine: unavailable with a reason, or its medians, spreads and speed-ups."""

    available: bool
    reason: Text = ""
    latency_ms: Number | None = None
    latency_spread: Number | None = None
    throughput_seq_per_s: Number | None = None
    throughput_spread: Number | None = None
    latency_speedup: Rounds | None = None
    throughput_speedup: Rounds | None = None
    max_abs_diff: Number | None = None
    memory: Memory | None = None


@dataclass(frozen=True)
class ServedModel:
    """What is shipped of one model: counts, bytes of its weight files, and a cell per engine."""

    path: PathText
    parameters: Int
    disk_bytes: Int
    matrix_weights: Int | None
    engines: dict[Text, EngineCell]
    int8: bool = False


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    reason: Text
    attempts: Int = 1


@dataclass(frozen=True)
class ServingSetup:
    seq_len: Int
    latency_batch: Int
    throughput_batch: Int
    engines: list[Text]
    threads: Int
    cores: Int
    compile_backend: Text = "inductor"


@dataclass(frozen=True)
class Serving:
    """The serving measurement (tensorslim.report.serving.measure_serving) of the run's models."""

    settings: ServingSetup
    baseline: Text
    models: dict[Text, ServedModel]
    timing: dict[Text, Verdict]  # "latency" and "throughput"
    warnings: list[Text] = Field(default_factory=list)


@dataclass(frozen=True)
class Baseline:
    """The constant predictor's dev scores (tensorslim.train.evaluate.constant_baseline)."""

    predictor: Text
    dev: dict[Text, Any]


@dataclass(frozen=True)
class Run:
    title: Text
    task: Text
    metric: Text  # key of the headline dev score
    teacher: Teacher
    students: list[Student]
    stages: list[Stage]
    settings: dict[Text, Any] | None = None
    speed: Speed | None = None
    baseline: Baseline | None = None
    serving: Serving | None = None

    @property
    def models(self) -> list[tuple[str, Teacher | Student]]:
        """(name, model) of the teacher (named 'teacher') and every student, in order."""
        return [("teacher", self.teacher)] + [(s.name, s) for s in self.students]


_ADAPTER = TypeAdapter(Run)
_SERVING = TypeAdapter(Serving)
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _where(loc: tuple, root: str = "run") -> str:
    return root + "".join(f"[{part!r}]" for part in loc)


def _validate(adapter: TypeAdapter, value: Any, root: str):
    """adapter.validate_python(value); TensorslimError naming the first problem's location under `root`."""
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        loc, kind = tuple(first["loc"]), first["type"]
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        if kind == "missing":
            parent = _where(loc[:-1], root)
            raise TensorslimError(
                f"the run dict is missing key {loc[-1]!r} at {_where(loc, root)}{more}",
                f"add {loc[-1]!r} to {parent} ({CONTRACT})",
            ) from None
        expected = _EXPECTED.get(kind, first["msg"].removeprefix("Input should be ").lower())
        raise TensorslimError(
            f"{_where(loc, root)} must be {expected}, got {first.get('input')!r:.80}{more}",
            f"fix {_where(loc, root)} in the run dict ({CONTRACT})",
        ) from None


def parse_run(run: Any) -> Run:
    """The typed Run of a run dict; TensorslimError naming the first missing or mistyped key."""
    parsed = _validate(_ADAPTER, run, "run")
    _check_consistency(parsed)
    return parsed


def parse_serving(serving: Any, root: str = "run['serving']") -> Serving:
    """The typed Serving of a serving record (measure_serving); errors name locations under `root`."""
    parsed = _validate(_SERVING, serving, root)
    _check_serving(parsed, root)
    return parsed


def _check_serving(serving: Serving, root: str) -> None:
    """Both timings, and a cell per engine of the settings for every model."""
    missing = [k for k in ("latency", "throughput") if k not in serving.timing]
    if missing:
        raise TensorslimError(
            f"the run dict is missing key {missing[0]!r} at {root}['timing'][{missing[0]!r}]",
            "pass the record measure_serving returned unchanged",
        )
    for name, model in serving.models.items():
        for engine in serving.settings.engines:
            if engine not in model.engines:
                raise TensorslimError(
                    f"the run dict is missing key {engine!r} at {root}['models'][{name!r}]['engines'][{engine!r}]",
                    "pass the record measure_serving returned unchanged",
                )


def _check_consistency(run: Run) -> None:
    """What types cannot say: the metric in every dev dict, distinct names, matrix shapes, speed keys."""
    for where, model in [("run['teacher']", run.teacher)] + [
        (f"run['students'][{i}]", s) for i, s in enumerate(run.students)
    ]:
        if run.metric not in model.dev:
            raise TensorslimError(
                f"the run dict is missing key {run.metric!r} (run['metric']) at {where}['dev'][{run.metric!r}]; "
                f"it has {sorted(model.dev) or 'no scores'}",
                f"add the dev {run.metric} to {where}['dev'], or set run['metric'] to a key every dev dict has",
            )
        score = model.dev[run.metric]
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise TensorslimError(
                f"{where}['dev'][{run.metric!r}] must be a number or None, got {score!r:.80}",
                "store the dev score as a float",
            )
    names = [s.name for s in run.students]
    if len(set(names)) != len(names) or "teacher" in names:
        raise TensorslimError(
            f"student names repeat or use the reserved name 'teacher': {names}",
            "give every student a distinct name other than 'teacher'",
        )
    for i, student in enumerate(run.students):
        rows, cols = student.decomposition.relative_error_per_layer_slot, len(student.decomposition.slots)
        if not rows or any(len(r) != cols for r in rows):
            where = f"run['students'][{i}]['decomposition']"
            raise TensorslimError(
                f"{where}['relative_error_per_layer_slot'] must be a layers x {cols} list "
                f"(one column per slot in {where}['slots'])",
                "pass the decomposition.json written by `tensorslim decompose` unchanged",
            )
    if run.speed is not None:
        missing = [name for name, _ in run.models if name not in run.speed.sequences_per_second]
        if missing:
            raise TensorslimError(
                f"run['speed'] has no measurement of {missing}",
                "measure the teacher and every student together (timing.measure_models), named as in the run",
            )
    if run.serving is not None:
        _check_serving(run.serving, "run['serving']")
        missing = [name for name, _ in run.models if name not in run.serving.models]
        if missing:
            raise TensorslimError(
                f"run['serving'] has no measurement of {missing}",
                "measure the teacher and every student together (serving.measure_serving), named as in the run",
            )


def finite(value) -> bool:
    """A real number (not bool), not NaN or infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
