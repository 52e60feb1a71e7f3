"""`tensorslim sweep`: the decompose -> distill -> evaluate chain over several rank settings, with the
score-against-size curve (the paper's main figure). Finished settings are reused on a rerun."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.glue import get_task
from ..errors import TensorslimError
from ..io import begin_dir, check_output_dir, finish_dir
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


def check_sweep(
    teacher: Path,
    task: str,
    glue_dir: Path,
    out: Path,
    settings: list[RankSetting],
    plan: TrainingPlan,
    method: str,
    pregenerated: Path | None,
    ops: str,
    overwrite: bool,
    max_eval_samples: int | None,
) -> None:
    """Refuse bad settings, inputs and --out before the first stage (see `run_sweep`)."""
    from ..compress.api import check_settings
    from ..compress.loading import infer_head, load_config
    from ..data.glue import check_label_mapping, task_file
    from ..train.models import check_max_length, check_trained_task
    from ..validate import check_above, check_at_least, check_existing_dir, check_finite_weights

    if not settings:
        raise TensorslimError("no rank settings given", "pass --ranks, e.g. --ranks 72x384 36x256 36x128")
    spec = get_task(task)
    for flag, value, low in (
        ("--batch-size", plan.batch_size, 1),
        ("--general-steps", plan.general_steps, 1),
        ("--max-train-samples", plan.max_train_samples, 1),
        ("--seed", plan.seed, 0),
        ("--max-eval-samples", max_eval_samples, 1),
    ):
        check_at_least(flag, value, low)
    for flag, value in (("--stage1-epochs", plan.stage1_epochs), ("--stage2-epochs", plan.stage2_epochs)):
        check_above(flag, value, 0)
    for split in ("train_aug" if plan.aug else "train", *spec.dev_splits):
        task_file(Path(glue_dir), spec, split)
    check_existing_dir(pregenerated, "--data")
    if pregenerated is not None and not (Path(pregenerated) / "pregenerate.json").is_file():
        raise TensorslimError(
            f"--data {pregenerated} holds no finished pregenerated data (no pregenerate.json)",
            "pass the --out of a finished `tensorslim pregenerate`",
        )
    check_output_dir(out, "sweep", inputs=[teacher, glue_dir, pregenerated], overwrite=overwrite)
    config = load_config(teacher)
    check_trained_task(teacher, spec, "teacher")
    if infer_head(config) != "sequence_classification":
        raise TensorslimError(
            f"--teacher {teacher} has no classification head",
            f"fine-tune it on {spec.name} first: tensorslim finetune --model {teacher} --task {spec.name}",
        )
    check_label_mapping(spec, config)
    check_max_length(plan.max_seq_length, config, "--max-seq-length")
    for setting in settings:
        try:
            check_settings(
                config, method, ops=ops, budget=setting.budget, rank=setting.rank, layer_rank=setting.layer_rank
            )
        except TensorslimError as exc:
            raise TensorslimError(
                f"--ranks {setting.label}: {exc.problem}",
                f"{exc.fix} (in --ranks: LAYER_RANKxRANK, RANK or a budget such as 2M)",
            ) from None
    check_finite_weights(teacher)


def run_sweep(
    teacher: Path,
    task: str,
    glue_dir: Path,
    out: Path,
    settings: list[RankSetting],
    plan: TrainingPlan,
    method: str = "tucker",
    pregenerated: Path | None = None,
    ops: str = "all",
    force: bool = False,
    overwrite: bool = False,
    throughput_seconds: float = 3.0,
    max_eval_samples: int | None = None,
) -> dict:
    """Train and evaluate one student per setting from the task teacher `teacher`; write the report."""
    from ..report.render import render_report
    from ..report.summary import describe, measure_dirs
    from ..train.evaluate import baseline_dev, evaluate

    final = Path(out)
    check_sweep(teacher, task, glue_dir, final, settings, plan, method, pregenerated, ops, overwrite, max_eval_samples)
    out = begin_dir(final, "sweep", continue_existing=True)  # a rerun continues in place, reusing finished settings
    task_spec = get_task(task)
    stages = StageRunner(out, force)
    upstream = {"teacher": str(teacher), "glue_dir": str(glue_dir), "pregenerated": str(pregenerated)}
    students = [
        student_chain(
            stages,
            f"{method} {s.label}",
            out / "students" / f"{method}-{s.slug}",
            teacher,
            task_spec.name,
            glue_dir,
            plan,
            pregenerated,
            upstream,
            method=method,
            rank=s.rank,
            layer_rank=s.layer_rank,
            budget=s.budget,
            ops=ops,
        )
        for s in settings
    ]
    evaluated = {}
    entries = [("teacher", teacher, {})] + [
        (st.final.parent.name, st.final, stages.inputs(f"task distillation {st.name}")) for st in students
    ]
    for name, model, trained in entries:
        results = out / "eval" / name
        evaluated[str(model)] = stages.run(
            f"evaluate {name}",
            results,
            lambda p: (p / "eval_results.json").is_file(),
            lambda m=model, r=results: evaluate(
                m, task_spec.name, glue_dir, r, max_seq_length=plan.max_seq_length, max_eval_samples=max_eval_samples
            ),
            {"model": str(model), "max_eval_samples": max_eval_samples, "trained": trained},
        )
    speed = measure_dirs({"teacher": teacher} | {st.name: st.final for st in students}, seconds=throughput_seconds)
    run = {
        "title": f"tensorslim sweep: {method} students of {teacher.name} on {task_spec.name}",
        "task": task_spec.name,
        "metric": "score",
        "teacher": {"path": str(teacher), "dev": dev_scores(evaluated[str(teacher)]), "report": describe(teacher)},
        "students": [st.summary(dev_scores(evaluated[str(st.final)]), describe(st.final)) for st in students],
        "speed": speed,
        "baseline": baseline_dev(evaluated[str(teacher)]),
        "settings": {
            "method": method,
            "ops": ops,
            "ranks": [s.label for s in settings],
            "teacher": str(teacher),
            "pregenerated": str(pregenerated) if pregenerated else None,
        },
        "stages": stages.stages(),
    }
    run["report_paths"] = {k: str(v) for k, v in render_report(run, out / "report", overwrite=True).items()}
    finish_dir(out, final, "sweep")
    return run
