"""General distillation: a pre-trained teacher teaches a (decomposed) student on unlabeled text.

The paper's objective (`recipes.general_objective`): MSE on the last layer's pre-softmax attention
scores (padded keys zeroed) plus MSE on the last layer's hidden states, no MLM loss. Any other
`DistillationConfig` works, e.g. TinyBERT's ``layer_map: uniform`` with an ``embedding`` term.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainingArguments, set_seed

from ..distill.config import DistillationConfig
from ..distill.trainer import DistillationTrainer
from ..errors import TensorslimError
from ..signals import GracefulStop
from ..validate import check_finite_weights
from . import recipes, run_dir
from .args import for_run
from .models import load_config, load_encoder, load_tokenizer
from .pretraining_data import PretrainingCollator, load_inputs, max_seq_len
from .runner import TRAINING_SAFE_POINT, train_and_save

log = logging.getLogger(__name__)


def distill_general(
    teacher: str | Path,
    student: str | Path,
    data: str | Path,
    out: str | Path,
    args: TrainingArguments | None = None,
    config: DistillationConfig | None = None,
    *,
    eval_data: str | Path | None = None,
    max_train_samples: int | None = None,
    pad_to_max_length: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Distill `teacher` into `student` on pregenerated `data`; save the student to `out`.

    `args` defaults to `recipes.GENERAL_TRAINING`; `config` to the paper's objective.
    `eval_data` (another pregenerated directory) gives an eval loss for --eval_strategy and
    best-checkpoint selection. `pad_to_max_length` pads every batch to the data's max_seq_len
    (equal shapes on every worker) instead of to its longest sequence. Returns the final metrics.
    """
    with GracefulStop(TRAINING_SAFE_POINT) as stop:  # a signal from here on stops at the next safe point
        inputs = (teacher, student, data, eval_data)
        run_dir.check(out, resume, overwrite, "distill general", inputs)  # fail early, before loading anything
        if max_train_samples is not None and max_train_samples < 1:
            raise TensorslimError(f"--max-train-samples {max_train_samples} is out of range", "pass 1 or more")
        config = config or recipes.general_objective()
        for path in (teacher, student):
            load_config(path)
            check_finite_weights(path)
        teacher_model = load_encoder(teacher)
        tokenizer = load_tokenizer(student, teacher)
        args = for_run(args, Path(out), recipes.GENERAL_TRAINING)
        set_seed(args.seed)  # any newly initialised student weights start the same in every run
        student_model = load_encoder(student)
        train = load_inputs(data)
        if max_train_samples:
            train = train.select(range(min(max_train_samples, len(train))))
        evaluation = load_inputs(eval_data) if eval_data else None
        with args.main_process_first(local=False, desc="preparing --out"):  # every input is loaded: now `out`
            work, last = run_dir.prepare(out, resume, overwrite, "distill general", inputs)
        args = for_run(args, work, {})
        trainer = DistillationTrainer(
            model=student_model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=PretrainingCollator(
                tokenizer.pad_token_id or 0, max_seq_len(data) if pad_to_max_length else None
            ),
            teacher=teacher_model,
            distill_config=config,
        )
        info = {
            "command": "distill general",
            "teacher": str(teacher),
            "student": str(student),
            "data": str(data),
            "train_examples": len(train),
            "distillation": config.to_dict(),
        }
        metrics = train_and_save(trainer, work, last, tokenizer, info, stop)
        run_dir.finish(work, Path(out), "distill general")
        if stop.signal is not None:  # it came during the final evaluation or save: stop here, the model is whole
            raise KeyboardInterrupt(f"stopped after saving the final model to {out}")
        return metrics
