"""`tensorslim distill general|task`: knowledge distillation of a (decomposed) student."""

from __future__ import annotations

import argparse
from pathlib import Path


def _common(p) -> None:
    from .flags import add_run_flags

    p.add_argument("--teacher", required=True, type=Path, help="teacher model directory (frozen)")
    p.add_argument("--student", required=True, type=Path, help="student model directory (e.g. from decompose)")
    p.add_argument("--out", required=True, type=Path, help="output directory: final student + checkpoints/")
    p.add_argument(
        "--distill-config",
        type=Path,
        default=None,
        help="JSON/YAML file with DistillationConfig fields (losses, weights, layer_map, temperature)",
    )
    add_run_flags(p)


def register(subparsers) -> None:
    from ..train.general import DEFAULT_SEQ_LENGTH
    from ..train.recipes import GENERAL_TRAINING, TASK_EPOCHS, TASK_TRAINING

    parser = subparsers.add_parser(
        "distill",
        help="distill a teacher into a student (general or task)",
        description="Knowledge distillation with a frozen teacher.",
    )
    sub = parser.add_subparsers(dest="stage_kind", metavar="KIND", required=True)

    g = sub.add_parser(
        "general",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="general distillation on unlabeled text (pregenerated, or plain text for causal LMs)",
        description="General distillation. Encoders (the paper's): MSE on the last layer's pre-softmax attention "
        "scores (padded keys zeroed) + MSE on the last layer's hidden states, no MLM loss, on pregenerated data. "
        "Causal LMs (healing): KL of the student's next-token distribution to the teacher's at --temperature, on "
        "plain text packed into --seq-length sequences. --distill-config chooses any other objective. Defaults: "
        + ", ".join(f"{k}={v}" for k, v in GENERAL_TRAINING.items())
        + ".",
    )
    _common(g)
    data = g.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, default=None, help="pregenerated data directory (tensorslim pregenerate)")
    data.add_argument(
        "--corpus",
        nargs="+",
        type=Path,
        default=None,
        metavar="PATH",
        help="plain-text files or directories packed into --seq-length token sequences (documents joined in "
        "order, each ended by the tokenizer's end-of-sequence token)",
    )
    g.add_argument("--eval-data", type=Path, default=None, help="held-out pregenerated data for evaluation")
    g.add_argument("--eval-corpus", nargs="+", type=Path, default=None, metavar="PATH", help="held-out text (--corpus)")
    g.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help=f"tokens per packed --corpus sequence (unset: {DEFAULT_SEQ_LENGTH}, or the model's context if shorter)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="softmax temperature of logits terms; unset: 1.0 or --distill-config",
    )
    g.add_argument(
        "--layer-map",
        choices=["last", "uniform"],
        default=None,
        help="last: last layer only (paper); uniform: TinyBERT's per-layer map (default: last)",
    )
    g.add_argument("--embedding-loss", action="store_true", help="add TinyBERT's embedding-layer MSE term")
    g.set_defaults(func=run_general)

    epochs = ", ".join(f"{k} {a}/{b}" for k, (a, b) in TASK_EPOCHS.items())
    t = sub.add_parser(
        "task",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="task distillation on a GLUE task (stage 1 layers, stage 2 logits)",
        description="Task distillation: stage 1 matches attention scores and hidden states of every layer at a "
        "constant learning rate, stage 2 matches logits (soft cross-entropy at --temperature; MSE to "
        f"the gold score for STS-B). Epochs per task (stage 1/2): {epochs}. Other defaults: "
        + ", ".join(f"{k}={v}" for k, v in TASK_TRAINING.items())
        + ", max length 64 CoLA/SST-2 else 128.",
    )
    _common(t)
    t.add_argument("--task", required=True, help="GLUE task name")
    t.add_argument("--glue-dir", required=True, type=Path, help="GLUE root holding <TASK>/train.tsv, dev.tsv")
    t.add_argument("--aug", action="store_true", help="train on train_aug.tsv (tensorslim augment)")
    t.add_argument("--stage", choices=["1", "2", "both"], default="both", help="which stages to run")
    t.add_argument("--stage1-epochs", type=float, default=None, help="stage 1 epochs; unset: the task's recipe")
    t.add_argument("--stage2-epochs", type=float, default=None, help="stage 2 epochs; unset: the task's recipe")
    t.add_argument(
        "--temperature", type=float, default=None, help="stage 2 softmax temperature; unset: 1.0 or --distill-config"
    )
    t.add_argument("--max-seq-length", type=int, default=None, help="token limit; unset: 64 for CoLA/SST-2, else 128")
    t.set_defaults(func=run_task)


def run_general(args) -> None:
    from ..distill.config import make_config, read_config_file
    from ..train import distill_general, recipes
    from ..train.general import default_objective
    from ..train.run_dir import CHECKPOINTS
    from .flags import parse_training_args

    config = default_objective(args.teacher, args.student)
    if args.distill_config:
        config = make_config(read_config_file(args.distill_config), config, str(args.distill_config))
    overrides = {}
    if args.layer_map:
        overrides["layer_map"] = args.layer_map
    if args.embedding_loss and "embedding" not in config.losses:
        overrides["losses"] = [*config.losses, "embedding"]
    if args.temperature is not None:
        overrides["temperature"] = args.temperature
    config = make_config(overrides, config, "flags")
    training = parse_training_args(args.extra, args.out / CHECKPOINTS, recipes.GENERAL_TRAINING)
    distill_general(
        args.teacher,
        args.student,
        args.data,
        args.out,
        training,
        config,
        corpus=args.corpus,
        seq_length=args.seq_length,
        eval_data=args.eval_data,
        eval_corpus=args.eval_corpus,
        max_train_samples=args.max_train_samples,
        pad_to_max_length=args.pad_to_max_length,
        resume=args.resume,
        overwrite=args.overwrite,
    )


def run_task(args) -> None:
    from ..compress.loading import load_config
    from ..compress.section import factored_embeddings
    from ..data.glue import get_task
    from ..distill.config import make_config, read_config_file
    from ..train import distill_task, recipes
    from ..train.task import STAGES, stage_checkpoints, stage_defaults
    from .flags import parse_training_args, passed_flags

    task = get_task(args.task)
    objectives = recipes.task_objectives(task.is_regression, factored_embeddings(load_config(args.student)))
    if args.distill_config:
        data = read_config_file(args.distill_config)
        for s in (1, 2):
            section = data.pop(f"stage{s}", None)
            if section is not None:
                objectives[s] = make_config(section, objectives[s], f"{args.distill_config} stage{s}")
        if data:
            objectives = {s: make_config(data, c, str(args.distill_config)) for s, c in objectives.items()}
    if args.temperature is not None:
        objectives[2] = make_config({"temperature": args.temperature}, objectives[2], "flags")
    explicit = "num_train_epochs" in passed_flags(args.extra)
    epochs = {1: args.stage1_epochs, 2: args.stage2_epochs}
    training = {
        s: parse_training_args(
            args.extra, stage_checkpoints(args.out, s), stage_defaults(task.name, s, None if explicit else epochs[s])
        )
        for s in STAGES[args.stage]
    }
    distill_task(
        args.teacher,
        args.student,
        task.name,
        args.glue_dir,
        args.out,
        training,
        objectives,
        stage=args.stage,
        aug=args.aug,
        max_seq_length=args.max_seq_length,
        max_train_samples=args.max_train_samples,
        pad_to_max_length=args.pad_to_max_length,
        resume=args.resume,
        overwrite=args.overwrite,
    )
