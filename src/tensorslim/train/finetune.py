"""Fine-tune a BERT (or a decomposed student) on a GLUE task: the task teacher.

The result is an ordinary sequence-classification model directory with the tokenizer and the
task's labels in config.id2label/label2id (num_labels 1 for STS-B regression).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import Trainer, TrainingArguments, set_seed

from ..data.glue import get_task, task_file
from ..signals import GracefulStop
from ..validate import check_finite_weights
from . import recipes, run_dir
from .args import for_run
from .glue_data import collator, encode_split, metrics_fn
from .models import check_max_length, load_classifier, load_config, load_tokenizer
from .runner import TRAINING_SAFE_POINT, train_and_save

log = logging.getLogger(__name__)


def finetune(
    model: str | Path,
    task: str,
    glue_dir: str | Path,
    out: str | Path,
    args: TrainingArguments | None = None,
    *,
    max_seq_length: int | None = None,
    train_split: str = "train",
    max_train_samples: int | None = None,
    pad_to_max_length: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Fine-tune `model` on `task`, save the classifier to `out`, return the final dev metrics.

    `args` defaults to `recipes.FINETUNE_TRAINING`; its output_dir is replaced by <out>/checkpoints.
    """
    with GracefulStop(TRAINING_SAFE_POINT) as stop:  # a signal from here on stops at the next safe point
        task = get_task(task)
        inputs = (model, task_file(Path(glue_dir), task, train_split).parent)
        run_dir.check(out, resume, overwrite, "finetune", inputs)  # fail early, before loading anything
        config = load_config(model)
        check_finite_weights(model)
        length = check_max_length(
            task.max_seq_length if max_seq_length is None else max_seq_length, config, "--max-seq-length"
        )
        tokenizer = load_tokenizer(model)
        args = for_run(args, Path(out), {**recipes.FINETUNE_TRAINING, "metric_for_best_model": "score"})
        set_seed(args.seed)  # a new classification head starts the same in every run (and on --resume)
        classifier = load_classifier(model, task, new_head_ok=True)
        train = encode_split(glue_dir, task, train_split, tokenizer, length, max_train_samples)
        dev = encode_split(glue_dir, task, task.dev_splits[0], tokenizer, length)
        with args.main_process_first(local=False, desc="preparing --out"):  # every input is loaded: now `out`
            work, last = run_dir.prepare(out, resume, overwrite, "finetune", inputs)
        args = for_run(args, work, {})
        trainer = Trainer(
            model=classifier,
            args=args,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=collator(tokenizer, length if pad_to_max_length else None),
            compute_metrics=metrics_fn(task),
        )
        info = {
            "command": "finetune",
            "task": task.name,
            "max_seq_length": length,
            "train_split": train_split,
            "train_examples": len(train),
            "base_model": str(model),
        }
        metrics = train_and_save(trainer, work, last, tokenizer, info, stop)
        run_dir.finish(work, Path(out), "finetune")
        if stop.signal is not None:  # it came during the final evaluation or save: stop here, the model is whole
            raise KeyboardInterrupt(f"stopped after saving the final model to {out}")
        log.info("%s dev score %.4f", task.name, metrics.get("eval_score", float("nan")))
    return metrics
