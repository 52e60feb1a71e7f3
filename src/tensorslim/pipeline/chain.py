"""One student's chain: decompose -> general distillation -> task distillation, as reusable stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .stages import StageRunner


@dataclass
class TrainingPlan:
    """Step and epoch budgets and common Trainer settings of the training stages."""

    max_seq_length: int
    general_steps: int = 120
    stage1_epochs: float = 1.0
    stage2_epochs: float = 2.0
    stage1_steps: int | None = None  # when set, replaces the stage's epochs
    stage2_steps: int | None = None
    task_lr: float = 1e-4
    batch_size: int = 32
    aug: bool = True
    max_train_samples: int | None = None
    seed: int = 42

    def basics(self) -> dict:
        """The settings every training stage shares (stage inputs of fine-tuning and augmentation)."""
        return {k: getattr(self, k) for k in ("max_seq_length", "max_train_samples", "batch_size", "seed")}

    def trainer_settings(self, **values) -> dict:
        """`TrainingArguments` fields every stage sets, plus `values` (a stage's own)."""
        return dict(
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=64,
            logging_steps=5,
            save_steps=100000,
            seed=self.seed,
            **values,
        )


@dataclass
class StudentRun:
    name: str
    init: Path
    general: Path | None
    final: Path

    def summary(self, dev: dict, report: dict) -> dict:
        """The student entry of a report `run` (see report.render)."""
        return {
            "name": self.name,
            "path": str(self.final),
            "decomposition": json.loads((self.init / "decomposition.json").read_text()),
            "dev": dev,
            "report": report,
            "log_history": {
                "general": history(self.general) if self.general else [],
                "task_stage1": history(self.final / "stage1"),
                "task_stage2": history(self.final),
            },
        }


def history(model_dir: Path) -> list[dict]:
    """Trainer log history saved with a finished training run (empty if none)."""
    info = model_dir / "tensorslim_training.json"
    return json.loads(info.read_text()).get("log_history", []) if info.is_file() else []


def student_chain(
    stages: StageRunner,
    name: str,
    base: Path,
    teacher: Path,
    task: str,
    glue_dir: Path,
    plan: TrainingPlan,
    pregenerated: Path | None,
    upstream: dict,
    **decompose_kwargs,
) -> StudentRun:
    """Stages `decompose NAME`, `general distillation NAME` (when `pregenerated`) and
    `task distillation NAME` under `base`; `decompose_kwargs` go to `decompose_to_dir`.
    `upstream` describes the teacher, data and pregenerated data (stage inputs, see StageRunner)."""
    from ..compress.api import decompose_to_dir
    from ..train import recipes, run_dir
    from ..train.args import training_args
    from ..train.general import distill_general
    from ..train.task import distill_task, stage_training_args

    init, final = base / "init", base / "task"
    general = base / "general" if pregenerated is not None else None
    inputs = {"upstream": upstream, "decompose": decompose_kwargs}
    stages.run(
        f"decompose {name}",
        init,
        lambda p: (p / "decomposition.json").is_file(),
        lambda: decompose_to_dir(teacher, init, overwrite=True, **decompose_kwargs)["decomposed_weights"],
        inputs,
    )
    if general is not None:
        stages.run(
            f"general distillation {name}",
            general,
            run_dir.is_finished,
            lambda: distill_general(
                teacher,
                init,
                pregenerated,
                general,
                training_args(
                    general / run_dir.CHECKPOINTS,
                    recipes.GENERAL_TRAINING,
                    **plan.trainer_settings(max_steps=plan.general_steps),
                ),
                overwrite=True,
            ),
            inputs | {"plan": plan.basics(), "steps": plan.general_steps},
        )
    stage_args = {
        st: stage_training_args(
            final,
            task,
            st,
            epochs,
            **plan.trainer_settings(learning_rate=plan.task_lr, **({"max_steps": steps} if steps else {})),
        )
        for st, epochs, steps in (
            (1, plan.stage1_epochs, plan.stage1_steps),
            (2, plan.stage2_epochs, plan.stage2_steps),
        )
    }
    samples = plan.max_train_samples
    stages.run(
        f"task distillation {name}",
        final,
        run_dir.is_finished,
        lambda: distill_task(
            teacher,
            general or init,
            task,
            glue_dir,
            final,
            stage_args,
            aug=plan.aug,
            max_seq_length=plan.max_seq_length,
            max_train_samples=samples,
            overwrite=True,
        ),
        inputs | {"plan": asdict(plan)},
    )
    return StudentRun(name, init, general, final)


def dev_scores(results: dict) -> dict:
    """The first dev split's metrics plus the mean score over the task's dev splits."""
    first = next(iter(results["splits"].values()))
    return {**first, "score": results["score"]}
