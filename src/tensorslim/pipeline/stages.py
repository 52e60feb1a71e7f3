"""Run a job as named stages whose outputs are ordinary directories, reusing finished ones.

Each stage records its seconds and its inputs (the settings it depends on, including those of the
stages it reads from) in <out>/stages.json when it finishes; a later run skips a stage whose output
is complete and whose inputs are unchanged (unless `force`), so an interrupted job continues where
it stopped and a changed setting redoes exactly the stages it affects.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..io import write_json

log = logging.getLogger(__name__)


class StageRunner:
    """`run(name, output, done, work, inputs)`: call `work()` unless `done(output)`, the recorded
    inputs equal `inputs` and not `force`; `done=None` always reruns the stage (cheap stages)."""

    def __init__(self, out: Path, force: bool = False):
        self.out, self.force = Path(out), force
        self.record_path = self.out / "stages.json"
        self.record: dict[str, dict] = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
        self.touched: list[str] = []  # stages run or reused in this job, in order

    def run(
        self,
        name: str,
        output: Path,
        done: Callable[[Path], bool] | None,
        work: Callable[[], object],
        inputs: dict | None = None,
    ):
        previous = self.record.get(name)
        inputs = _jsonable(inputs or {})
        if self.finished(name, output, done, inputs):
            log.info("stage %s: reusing %s (finished in %.0fs; --force redoes it)", name, output, previous["seconds"])
            previous["reused"] = True
            self.touched.append(name)
            return previous.get("result")
        log.info("stage %s: starting", name)
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        self.record[name] = {
            "seconds": seconds,
            "path": str(output),
            "result": _jsonable(result),
            "reused": False,
            "inputs": inputs,
        }
        write_json(self.record_path, self.record)
        self.touched.append(name)
        log.info("stage %s: done in %.0fs", name, seconds)
        return self.record[name]["result"]

    def finished(self, name: str, output: Path, done: Callable[[Path], bool] | None, inputs: dict | None) -> bool:
        """Whether `run` with these arguments would reuse the stage instead of running it."""
        previous = self.record.get(name)
        return bool(
            not self.force
            and previous
            and done is not None
            and previous.get("inputs") == _jsonable(inputs or {})
            and done(output)
        )

    def stages(self) -> list[dict]:
        """[{name, seconds, path, reused}] of the stages this job ran or reused, in that order
        (stages.json may also hold stages of earlier jobs with other settings)."""
        return [
            {"name": n, **{k: v for k, v in self.record[n].items() if k not in ("result", "inputs")}}
            for n in dict.fromkeys(self.touched)
        ]

    def inputs(self, name: str) -> dict:
        """The inputs a finished stage was run with (to chain into the stages that read its output)."""
        return self.record.get(name, {}).get("inputs", {})


def _jsonable(value):
    """`value` as it reads back from JSON (paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))
