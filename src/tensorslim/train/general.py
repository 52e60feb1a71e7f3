"""General distillation: a pre-trained teacher teaches a (decomposed) student on unlabeled text.

Two kinds of data: pregenerated shards (`tensorslim pregenerate`, BERT's layout) or plain text
packed into fixed-length sequences (`data.packing`: the healing data of causal LMs). The default
objective follows the teacher (`recipes.general_objective`): for encoders the paper's MSE on the
last layer's pre-softmax attention scores (padded keys zeroed) plus MSE on its hidden states; for
causal LMs the KL of the next-token distributions (`token_kl`); both plus TinyBERT's `embedding`
term when the student's word embeddings are factorised (`compress.embeddings`). Any other `DistillationConfig`
works, e.g. TinyBERT's ``layer_map: uniform`` with an ``embedding`` term, or ``token_kl`` plus the
paper's ``attention`` and ``hidden`` terms on a decoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainingArguments, default_data_collator, set_seed

from ..compress.section import factored_embeddings
from ..distill.config import DistillationConfig
from ..distill.teacher import check_pair
from ..distill.trainer import DistillationTrainer
from ..errors import TensorslimError
from ..families import get_family
from ..signals import GracefulStop
from ..validate import check_finite_weights
from . import recipes, run_dir
from .args import for_run
from .models import check_max_length, load_config, load_encoder, load_tokenizer, position_limit
from .pretraining_data import PretrainingCollator, load_inputs, max_seq_len
from .runner import TRAINING_SAFE_POINT, train_and_save

log = logging.getLogger(__name__)

#: Tokens per packed sequence when --corpus is given without --seq-length.
DEFAULT_SEQ_LENGTH = 512


def default_objective(teacher: str | Path, student: str | Path | None = None) -> DistillationConfig:
    """`recipes.general_objective` for the family of the model in directory `teacher` (with the
    embedding term when the `student` directory's word embeddings are factorised)."""
    factored = student is not None and factored_embeddings(load_config(student))
    return recipes.general_objective(causal=get_family(load_config(teacher)).causal, factored_embeddings=factored)


def _check_data(data, corpus, eval_data, eval_corpus, seq_length, max_train_samples) -> None:
    if (data is None) == (corpus is None):
        raise TensorslimError(
            "general distillation needs exactly one kind of data",
            "pass pregenerated data (--data DIR) or a plain-text corpus (--corpus FILE ...), not both",
        )
    if data is not None and (eval_corpus is not None or seq_length is not None):
        raise TensorslimError(
            "--eval-corpus and --seq-length go with --corpus; pregenerated data has its own length",
            "drop them, or train on --corpus",
        )
    if corpus is not None and eval_data is not None:
        raise TensorslimError("--eval-data is pregenerated data; --corpus trains on text", "pass --eval-corpus FILE")
    if max_train_samples is not None and max_train_samples < 1:
        raise TensorslimError(f"--max-train-samples {max_train_samples} is out of range", "pass 1 or more")


def _check_tokenizers(teacher: Path, student: Path):
    """The student's tokenizer (else the teacher's); refuses two that map ids to different tokens."""
    tokenizer = load_tokenizer(student, teacher)
    try:
        other = load_tokenizer(teacher)
    except TensorslimError:  # a teacher saved without its tokenizer: nothing to compare
        return tokenizer
    if other.get_vocab() != tokenizer.get_vocab():
        raise TensorslimError(
            f"the teacher {teacher} and the student {student} have different vocabularies "
            f"({len(other)} and {len(tokenizer)} tokens; a token id names different tokens in each)",
            "distill a student decomposed from this teacher (tensorslim decompose --teacher TEACHER): "
            "it keeps the teacher's tokenizer",
        )
    return tokenizer


def distill_general(
    teacher: str | Path,
    student: str | Path,
    data: str | Path | None,
    out: str | Path,
    args: TrainingArguments | None = None,
    config: DistillationConfig | None = None,
    *,
    corpus: list[str | Path] | None = None,
    seq_length: int | None = None,
    eval_data: str | Path | None = None,
    eval_corpus: list[str | Path] | None = None,
    max_train_samples: int | None = None,
    pad_to_max_length: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Distill `teacher` into `student` on pregenerated `data` or on `corpus` text; save it to `out`.

    `args` defaults to `recipes.GENERAL_TRAINING`; `config` to `default_objective(teacher, student)`.
    `corpus` (text files or directories) is packed into sequences of `seq_length` tokens
    (default `DEFAULT_SEQ_LENGTH`, or the models' context when shorter); `max_train_samples`
    keeps the first N sequences.
    `eval_data` (pregenerated) or `eval_corpus` (text) gives an eval loss for --eval_strategy and
    best-checkpoint selection. `pad_to_max_length` pads every pregenerated batch to the data's
    max_seq_len (equal shapes on every worker) instead of to its longest sequence; packed
    sequences are all full. Returns the final metrics.
    """
    from ..data.packing import packed_dataset

    corpus = [corpus] if isinstance(corpus, (str, Path)) else corpus
    eval_corpus = [eval_corpus] if isinstance(eval_corpus, (str, Path)) else eval_corpus
    with GracefulStop(TRAINING_SAFE_POINT) as stop:  # a signal from here on stops at the next safe point
        _check_data(data, corpus, eval_data, eval_corpus, seq_length, max_train_samples)
        inputs = (teacher, student, *([data] if data is not None else corpus), eval_data, *(eval_corpus or ()))
        run_dir.check(out, resume, overwrite, "distill general", inputs)  # fail early, before loading anything
        teacher_config, student_config = load_config(teacher), load_config(student)
        config = config or default_objective(teacher, student)
        check_pair(teacher_config, student_config, config.needs)
        if corpus is not None:
            limits = [position_limit(c) for c in (teacher_config, student_config)]
            if seq_length is None:
                seq_length = min([DEFAULT_SEQ_LENGTH, *filter(None, limits)])
            for model_config in (teacher_config, student_config):
                check_max_length(seq_length, model_config, "--seq-length")
        for path in (teacher, student):
            check_finite_weights(path)
        tokenizer = _check_tokenizers(Path(teacher), Path(student))
        if corpus is not None:  # pack before loading the models: a corpus too short fails fast
            train = packed_dataset(corpus, tokenizer, seq_length, max_train_samples)
            evaluation = packed_dataset(eval_corpus, tokenizer, seq_length) if eval_corpus else None
            collator = default_data_collator
        else:
            train = load_inputs(data)
            if max_train_samples:
                train = train.select(range(min(max_train_samples, len(train))))
            evaluation = load_inputs(eval_data) if eval_data else None
            collator = PretrainingCollator(
                tokenizer.pad_token_id or 0, max_seq_len(data) if pad_to_max_length else None
            )
        teacher_model = load_encoder(teacher)
        args = for_run(args, Path(out), recipes.GENERAL_TRAINING)
        set_seed(args.seed)  # any newly initialised student weights start the same in every run
        student_model = load_encoder(student)
        with args.main_process_first(local=False, desc="preparing --out"):  # every input is loaded: now `out`
            work, last = run_dir.prepare(out, resume, overwrite, "distill general", inputs)
        args = for_run(args, work, {})
        trainer = DistillationTrainer(
            model=student_model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=collator,
            teacher=teacher_model,
            distill_config=config,
        )
        info = {
            "command": "distill general",
            "teacher": str(teacher),
            "student": str(student),
            **({"data": str(data)} if data is not None else {"corpus": [str(p) for p in corpus]}),
            **({"seq_length": seq_length} if corpus is not None else {}),
            "train_examples": len(train),
            "distillation": config.to_dict(),
        }
        metrics = train_and_save(trainer, work, last, tokenizer, info, stop)
        run_dir.finish(work, Path(out), "distill general")
        if stop.signal is not None:  # it came during the final evaluation or save: stop here, the model is whole
            raise KeyboardInterrupt(f"stopped after saving the final model to {out}")
        return metrics
