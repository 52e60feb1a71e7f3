"""Task distillation: a fine-tuned teacher teaches a (decomposed) student on one GLUE task.

Stage 1 matches every (uniformly mapped) layer's attention scores and hidden states at a constant
learning rate; stage 2 matches logits (soft cross-entropy at temperature T; MSE to the gold score
for STS-B) with warm-up and linear decay. Per-task epochs and lengths follow the paper
(`tensorslim.train.recipes`). Stage 1's student is saved to <out>/stage1 and starts stage 2;
the final model is <out>. With --resume a finished stage 1 is not repeated.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainingArguments, set_seed

from ..compress.section import factored_embeddings
from ..data.glue import get_task, task_file
from ..distill.config import DistillationConfig
from ..distill.trainer import DistillationTrainer
from ..errors import TensorslimError
from ..signals import GracefulStop
from ..validate import check_finite_weights
from . import recipes, run_dir
from .args import training_args
from .glue_data import collator, encode_split, metrics_fn
from .models import check_max_length, check_trained_task, load_classifier, load_config, load_tokenizer
from .runner import TRAINING_SAFE_POINT, train_and_save

log = logging.getLogger(__name__)

STAGES = {"1": (1,), "2": (2,), "both": (1, 2)}


def stage_defaults(task: str, stage: int, epochs: float | None = None) -> dict:
    """The paper's `TrainingArguments` settings of one stage for `task`; `epochs` (e.g. from
    --stage1-epochs) replaces the recipe's epochs."""
    name = get_task(task).name
    defaults = {
        **recipes.TASK_TRAINING,
        **recipes.STAGE_SCHEDULE[stage],
        "num_train_epochs": float(epochs if epochs is not None else recipes.task_epochs(name)[stage - 1]),
    }
    if stage == 2:
        defaults["metric_for_best_model"] = "score"
    return defaults


def stage_checkpoints(out: str | Path, stage: int) -> Path:
    """Where one stage writes its checkpoints: <out>/stage1/checkpoints, <out>/checkpoints."""
    return (Path(out) / "stage1" if stage == 1 else Path(out)) / run_dir.CHECKPOINTS


def stage_training_args(
    out: str | Path, task: str, stage: int, epochs: float | None = None, **settings
) -> TrainingArguments:
    """TrainingArguments of one stage: the paper's defaults for `task` (`stage_defaults`), then `settings`
    (TrainingArguments fields, e.g. max_steps=100)."""
    return training_args(stage_checkpoints(out, stage), stage_defaults(task, stage, epochs), **settings)


def distill_task(
    teacher: str | Path,
    student: str | Path,
    task: str,
    glue_dir: str | Path,
    out: str | Path,
    args: dict[int, TrainingArguments] | None = None,
    objectives: dict[int, DistillationConfig] | None = None,
    *,
    stage: str = "both",
    aug: bool = False,
    max_seq_length: int | None = None,
    max_train_samples: int | None = None,
    pad_to_max_length: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run the stages named by `stage` ("1", "2", "both"); return the final dev metrics.

    `args[s]` / `objectives[s]` default to the paper's recipe for stage s (see `stage_training_args`
    and `recipes.task_objectives`). The student may be any encoder directory (a classification
    head is added with the task's labels); the teacher must be a classifier fine-tuned on `task`.
    """
    task = get_task(task)
    if stage not in STAGES:
        raise TensorslimError(f"unknown stage {stage!r}", "use --stage 1, 2 or both")
    with GracefulStop(TRAINING_SAFE_POINT) as stop:  # a signal from here on (both stages) stops at the next safe point
        split = "train_aug" if aug else "train"
        inputs = (teacher, student, task_file(Path(glue_dir), task, split).parent)
        run_dir.check(out, resume, overwrite, "distill task", inputs)  # fail early, before loading anything
        check_trained_task(teacher, task, "teacher")
        for path in (teacher, student):
            load_config(path)
            check_finite_weights(path)
        teacher_model = load_classifier(teacher, task, "teacher")
        student_config = load_config(student)  # fail early on a bad student directory
        length = check_max_length(
            task.max_seq_length if max_seq_length is None else max_seq_length, student_config, "--max-seq-length"
        )
        check_max_length(length, teacher_model.config, "--max-seq-length")
        tokenizer = load_tokenizer(student, teacher)
        args = dict(args or {})
        for s in STAGES[stage]:
            if s not in args:
                args[s] = stage_training_args(out, task.name, s)
        defaults = recipes.task_objectives(task.is_regression, factored_embeddings(student_config))
        objectives = {**defaults, **(objectives or {})}
        train = encode_split(glue_dir, task, split, tokenizer, length, max_train_samples)
        dev = encode_split(glue_dir, task, task.dev_splits[0], tokenizer, length)
        with args[STAGES[stage][0]].main_process_first(local=False, desc="preparing --out"):  # inputs loaded: now `out`
            work, _ = run_dir.prepare(out, resume, overwrite, "distill task", inputs)
            if 1 in STAGES[stage]:
                if resume and run_dir.is_main_process():
                    run_dir.recover(work / "stage1")
                (work / "stage1").mkdir(exist_ok=True)
        info = {
            "command": "distill task",
            "task": task.name,
            "max_seq_length": length,
            "train_split": split,
            "train_examples": len(train),
            "teacher": str(teacher),
            "student": str(student),
        }

        metrics: dict = {}
        stage1_dir = work / "stage1"
        for s in STAGES[stage]:
            stage_out = stage1_dir if s == 1 else work
            if s == 1 and resume and run_dir.is_finished(stage1_dir):
                log.info("stage 1 already finished in %s; skipping it", stage1_dir)
                continue
            source = stage1_dir if s == 2 and 1 in STAGES[stage] else student
            last = run_dir.last_complete_checkpoint(stage_out / run_dir.CHECKPOINTS) if resume else None
            args[s].output_dir = str(stage_out / run_dir.CHECKPOINTS)
            log.info(
                "task distillation stage %d: %s on %s, %s, objective %s",
                s,
                source,
                split,
                f"{args[s].num_train_epochs} epochs" if args[s].max_steps <= 0 else f"{args[s].max_steps} steps",
                objectives[s].losses,
            )
            set_seed(args[s].seed)  # a new classification head starts the same in every run (and on --resume)
            trainer = DistillationTrainer(
                model=load_classifier(source, task, "student", new_head_ok=True),
                args=args[s],
                train_dataset=train,
                eval_dataset=dev,
                data_collator=collator(tokenizer, length if pad_to_max_length else None),
                compute_metrics=metrics_fn(task) if "logits" in objectives[s].needs else None,
                teacher=teacher_model,
                distill_config=objectives[s],
            )
            stage_info = {**info, "stage": s, "distillation": objectives[s].to_dict()}
            metrics = train_and_save(trainer, stage_out, last, tokenizer, stage_info, stop)
        run_dir.finish(work, Path(out), "distill task")
        if stop.signal is not None:  # it came during the final evaluation or save: stop here, the model is whole
            raise KeyboardInterrupt(f"stopped after saving the final model to {out}")
        return metrics
