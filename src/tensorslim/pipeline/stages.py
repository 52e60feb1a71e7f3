"""Run a job as named stages whose outputs are ordinary directories, reusing finished ones.

Each stage records its seconds in <out>/stages.json when it finishes; a later run skips a stage
whose output is complete (unless `force`), so an interrupted job continues where it stopped.
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
    """`run(name, output, done, work)`: call `work()` unless `done(output)` and not `force`;
    `done=None` always reruns the stage (cheap stages whose inputs may have changed)."""

    def __init__(self, out: Path, force: bool = False):
        self.out, self.force = Path(out), force
        self.record_path = self.out / "stages.json"
        self.record: dict[str, dict] = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}

    def run(self, name: str, output: Path, done: Callable[[Path], bool] | None, work: Callable[[], object]):
        previous = self.record.get(name)
        if not self.force and previous and done is not None and done(output):
            log.info("stage %s: reusing %s (finished in %.0fs; --force redoes it)", name, output, previous["seconds"])
            previous["reused"] = True
            return previous.get("result")
        log.info("stage %s: starting", name)
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        self.record[name] = {"seconds": seconds, "path": str(output), "result": _jsonable(result), "reused": False}
        write_json(self.record_path, self.record)
        log.info("stage %s: done in %.0fs", name, seconds)
        return self.record[name]["result"]

    def stages(self) -> list[dict]:
        """[{name, seconds, path, reused}] in the order stages first finished."""
        return [{"name": n, **{k: v for k, v in r.items() if k != "result"}} for n, r in self.record.items()]


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
