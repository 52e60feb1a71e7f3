"""`tensorslim sweep`: the decompose -> distill -> evaluate chain over several rank settings, with the
score-against-size curve (the paper's main figure). Finished settings are reused on a rerun."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.glue import get_task
from ..errors import TensorslimError
from ..io import MARKER, check_output_dir
from .chain import TrainingPlan, dev_scores, student_chain
from .stages import StageRunner


@dataclass(frozen=True)
class RankSetting:
    """One student: explicit ranks ("36x128" = layer rank 36, rank 128; "128" = rank only) or a budget."""

    rank: int | None = None
    layer_rank: int | None = None
    budget: int | None = None

    @property
    def label(self) -> str:
        if self.budget is not None:
            return f"budget {self.budget:,}"
        return f"l={self.layer_rank} d={self.rank}" if self.layer_rank else f"d={self.rank}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-")


def parse_setting(text: str) -> RankSetting:
    """'36x128' -> layer rank 36 and rank 128; '128' -> rank 128; '2M' / 'budget=2M' -> a weight budget."""
    from ..cli.decompose import parse_count

    text = text.strip().lower().removeprefix("budget=")
    if m := re.fullmatch(r"(\d+)x(\d+)", text):
        return RankSetting(rank=int(m.group(2)), layer_rank=int(m.group(1)))
    if text.isdigit():
        return RankSetting(rank=int(text))
    if re.fullmatch(r"[\d.]+[kmg]", text):
        return RankSetting(budget=parse_count(text))
    raise TensorslimError(f"cannot read the rank setting {text!r}",
                          "write LAYER_RANKxRANK (36x128), a rank (128) or a budget (2M)")


def run_sweep(teacher: Path, task: str, glue_dir: Path, out: Path, settings: list[RankSetting], plan: TrainingPlan,
              method: str = "tucker", pregenerated: Path | None = None, ops: str = "all", force: bool = False,
              overwrite: bool = False, throughput_seconds: float = 3.0, max_eval_samples: int | None = None) -> dict:
    """Train and evaluate one student per setting from the task teacher `teacher`; write the report."""
    from ..report.render import render_report
    from ..report.summary import describe, measure_dirs
    from ..train.evaluate import baseline_dev, evaluate

    if not settings:
        raise TensorslimError("no rank settings given", "pass --ranks, e.g. --ranks 72x384 36x256 36x128")
    out = check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    task_spec = get_task(task)
    stages = StageRunner(out, force)
    upstream = {"teacher": str(teacher), "glue_dir": str(glue_dir), "pregenerated": str(pregenerated)}
    students = [student_chain(stages, f"{method} {s.label}", out / "students" / f"{method}-{s.slug}", teacher,
                              task_spec.name, glue_dir, plan, pregenerated, upstream, method=method, rank=s.rank,
                              layer_rank=s.layer_rank, budget=s.budget, ops=ops)
                for s in settings]
    evaluated = {}
    entries = [("teacher", teacher, {})] + [(st.final.parent.name, st.final, stages.inputs(f"task distillation {st.name}"))
                                            for st in students]
    for name, model, trained in entries:
        results = out / "eval" / name
        evaluated[str(model)] = stages.run(
            f"evaluate {name}", results, lambda p: (p / "eval_results.json").is_file(),
            lambda m=model, r=results: evaluate(m, task_spec.name, glue_dir, r, max_seq_length=plan.max_seq_length,
                                                max_eval_samples=max_eval_samples),
            {"model": str(model), "max_eval_samples": max_eval_samples, "trained": trained})
    speed = measure_dirs({"teacher": teacher} | {st.name: st.final for st in students}, seconds=throughput_seconds)
    run = {
        "title": f"tensorslim sweep: {method} students of {teacher.name} on {task_spec.name}",
        "task": task_spec.name, "metric": "score",
        "teacher": {"path": str(teacher), "dev": dev_scores(evaluated[str(teacher)]), "report": describe(teacher)},
        "students": [st.summary(dev_scores(evaluated[str(st.final)]), describe(st.final)) for st in students],
        "speed": speed, "baseline": baseline_dev(evaluated[str(teacher)]),
        "settings": {"method": method, "ops": ops, "ranks": [s.label for s in settings], "teacher": str(teacher),
                     "pregenerated": str(pregenerated) if pregenerated else None},
        "stages": stages.stages(),
    }
    run["report_paths"] = {k: str(v) for k, v in render_report(run, out / "report", overwrite=True).items()}
    return run
