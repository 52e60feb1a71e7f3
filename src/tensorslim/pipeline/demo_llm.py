"""`tensorslim demo --model llm`: decoder compression on the packaged SmolLM2, offline, with a report.

dense perplexity -> calibration moments (once) -> for each method and compression level a data-aware
student and its perplexity -> healing of the students at the first level (`distill general --corpus`,
eval loss every few steps) and their perplexity -> batch-1 decode speed, dense against the healed
students (interleaved) -> greedy continuations of fixed prompts -> report.md / report.html.

Text: WikiText-2 raw (`text_dir`): perplexity on a prefix of wiki.test.raw; calibration and healing on
wiki.train.raw (wiki.valid.raw when there is no train split), whose first lines are held out for the
healing curve. Every stage writes under `out` and a rerun reuses finished stages (pipeline/stages.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TensorslimError
from ..io import begin_dir, check_output_dir, finish_dir, write_json
from .chain import history
from .stages import StageRunner

log = logging.getLogger(__name__)

COMMAND = "demo --model llm"
SHARED_DATA_ENV = "TENSORSLIM_SHARED_DATA"
PROMPTS = (
    "The capital of France is",
    "The first man to walk on the Moon was",
    "Water is made of",
    "In 1492, Christopher Columbus",
)


@dataclass
class LlmDemoSettings:
    """Every knob of the decoder demo; the defaults fit 2 CPU cores and 30 minutes (docs/demo.md)."""

    out: Path = Path("runs/demo-llm")
    teacher: Path | None = None  # default: the packaged SmolLM2-135M
    text_dir: Path | None = None  # WikiText-2 raw; default: $TENSORSLIM_SHARED_DATA/corpus/wikitext_raw
    methods: list[str] = field(default_factory=lambda: ["lowrank", "shared", "tucker"])
    compressions: list[float] = field(default_factory=lambda: [0.2, 0.4])  # share of the matrix weights removed
    max_iter: int = 1  # sweeps of HOOI and of the data-aware refinement (shared, tucker)
    seq_length: int = 512  # perplexity windows
    max_tokens: int = 2048  # of wiki.test.raw scored
    calibration_samples: int = 16
    calibration_seq_length: int = 512
    heal_methods: list[str] | None = None  # students of the first level to heal; None: the one of lowest perplexity
    heal_steps: int = 24
    eval_steps: int = 6
    batch_size: int = 2
    heal_seq_length: int = 256
    heal_eval_sequences: int = 2
    learning_rate: float = 1e-4
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    new_tokens: int = 16  # per continuation
    decode_prompt_tokens: int = 16
    decode_new_tokens: int = 32
    decode_seconds: float = 1.0  # per model and timing attempt
    seed: int = 0
    force: bool = False
    overwrite: bool = False


def default_text_dir() -> Path:
    """$TENSORSLIM_SHARED_DATA/corpus/wikitext_raw, else ../shared/data/corpus/wikitext_raw."""
    shared = os.environ.get(SHARED_DATA_ENV)
    return (Path(shared) if shared else Path.cwd().parent / "shared" / "data") / "corpus" / "wikitext_raw"


def text_files(text_dir: Path) -> dict[str, Path]:
    """{"train": wiki.train.raw or wiki.valid.raw, "test": wiki.test.raw} of a WikiText-2 raw directory."""
    train = text_dir / "wiki.train.raw"
    files = {"train": train if train.is_file() else text_dir / "wiki.valid.raw", "test": text_dir / "wiki.test.raw"}
    for path in files.values():
        if not path.is_file():
            raise TensorslimError(
                f"{path} not found",
                "pass --text-dir as WikiText-2 raw's directory (wiki.test.raw, wiki.valid.raw) "
                f"or set {SHARED_DATA_ENV}",
            )
    return files


def packaged_decoder() -> Path:
    from ..data.packaged_llm import smollm2_dir

    return smollm2_dir()


def slug(method: str, level: float) -> str:
    return f"{method}-{round(100 * level)}"


def label(method: str, level: float) -> str:
    return f"{method} {round(100 * level)}%"


def check_settings(s: LlmDemoSettings) -> tuple[Path, dict[str, Path]]:
    """Refuse bad settings, inputs and --out before the first stage; return the dense model's
    directory and the text files."""
    from ..compress.api import check_compression
    from ..compress.api import check_settings as check_decomposition
    from ..compress.loading import infer_head, load_config
    from ..evaluate.perplexity import resolve_seq_length
    from ..train.models import check_max_length
    from ..validate import check_above, check_at_least, check_finite_weights

    for flag, value, low in (
        ("--max-iter", s.max_iter, 0),
        ("--seq-length", s.seq_length, 2),
        ("--max-tokens", s.max_tokens, s.seq_length),
        ("--calibration-samples", s.calibration_samples, 1),
        ("--calibration-seq-length", s.calibration_seq_length, 2),
        ("--heal-steps", s.heal_steps, 1),
        ("--eval-steps", s.eval_steps, 1),
        ("--batch-size", s.batch_size, 1),
        ("heal_seq_length", s.heal_seq_length, 2),
        ("heal_eval_sequences", s.heal_eval_sequences, 1),
        ("--new-tokens", s.new_tokens, 1),
        ("decode_new_tokens", s.decode_new_tokens, 1),
        ("decode_prompt_tokens", s.decode_prompt_tokens, 1),
        ("--seed", s.seed, 0),
    ):
        check_at_least(flag, value, low)
    check_above("learning_rate", s.learning_rate, 0)
    check_above("decode_seconds", s.decode_seconds, 0)
    if s.heal_methods and not set(s.heal_methods) <= set(s.methods):
        raise TensorslimError(
            f"--heal-method {' '.join(s.heal_methods)} is not among --method {' '.join(s.methods)}",
            "heal students the demo makes",
        )
    if not s.methods or not s.compressions:
        raise TensorslimError("no --method or no --compression given", "pass e.g. --method tucker --compression 20%")
    if not s.prompts or not all(p.strip() for p in s.prompts):
        raise TensorslimError("an empty prompt", "pass prompts with some text")
    for level in s.compressions:
        try:
            check_compression(level)
        except TensorslimError as exc:
            raise TensorslimError(f"--compression: {exc.problem}", exc.fix) from None
    files = text_files(Path(s.text_dir) if s.text_dir else default_text_dir())
    check_output_dir(s.out, COMMAND, inputs=[s.teacher, *files.values()], overwrite=s.overwrite)
    teacher = Path(s.teacher) if s.teacher else packaged_decoder()
    config = load_config(teacher)
    if infer_head(config) != "causal_lm":
        raise TensorslimError(f"{teacher} is not a causal language model", "pass a decoder (a ...ForCausalLM)")
    resolve_seq_length(config, s.seq_length)
    check_max_length(s.heal_seq_length, config, "heal_seq_length")
    check_max_length(s.calibration_seq_length, config, "--calibration-seq-length")
    for method in s.methods:
        for level in s.compressions:
            options = {} if method == "lowrank" else {"max_iter": s.max_iter}
            try:
                check_decomposition(config, method, compression=level, **options)
            except TensorslimError as exc:
                raise TensorslimError(f"{label(method, level)}: {exc.problem}", exc.fix) from None
    check_finite_weights(teacher)
    return teacher, files


def run_llm_demo(s: LlmDemoSettings) -> dict:
    """Run every stage (reusing finished ones); return the run the report is made from."""
    from ..compress.api import decompose_to_dir
    from ..compress.loading import load_model, load_tokenizer
    from ..data.packing import split_held_out
    from ..evaluate.perplexity import read_text, score, windows_of
    from ..report.decode import continuations, decode_speed
    from ..report.llm import render_llm_report
    from ..train import recipes, run_dir
    from ..train.args import training_args
    from ..train.general import distill_general

    teacher, files = check_settings(s)
    out = begin_dir(s.out, COMMAND, continue_existing=True)
    stages = StageRunner(out, s.force)
    tokenizer = load_tokenizer(teacher)
    data = out / "data"
    held_out = s.heal_eval_sequences * s.heal_seq_length + 1
    stages.run(
        "data",
        data,
        lambda p: (p / "train.txt").is_file() and (p / "heldout.txt").is_file(),
        lambda: split_held_out(files["train"], data, tokenizer, held_out),
        {"source": files["train"], "held_out_tokens": held_out, "teacher": teacher},
    )
    windows = windows_of(tokenizer, read_text(files["test"]), s.seq_length, s.max_tokens)
    scoring = {"text": files["test"], "seq_length": s.seq_length, "max_tokens": s.max_tokens}

    def perplexity_stage(name: str, key: str, model_dir: Path, upstream: dict) -> dict:
        path = out / "perplexity" / f"{key}.json"

        def work() -> dict:
            result = {"model": str(model_dir), **score(load_model(model_dir, "causal_lm"), windows)}
            write_json(path, result)
            return result

        return stages.run(f"perplexity {name}", path, Path.is_file, work, scoring | {"model": upstream})

    dense_inputs = {"teacher": teacher}
    perplexities = {"dense": perplexity_stage("dense", "dense", teacher, dense_inputs)}

    calibration = {
        "data": data / "train.txt",
        "samples": s.calibration_samples,
        "seq_length": s.calibration_seq_length,
        "seed": s.seed,
    }
    made = lambda p: (p / "decomposition.json").is_file()  # noqa: E731
    plan = []
    for level in s.compressions:
        for method in s.methods:
            options = {} if method == "lowrank" else {"max_iter": s.max_iter}
            inputs = dense_inputs | {"calibration": calibration, "method": method, "compression": level, **options}
            plan.append((label(method, level), out / "students" / slug(method, level), method, level, options, inputs))
    moments = None  # one pass of the dense model, only when a student is still to be made
    if not all(stages.finished(f"decompose {name}", student, made, inputs) for name, student, *_, inputs in plan):
        moments = _calibrate(stages, teacher, tokenizer, calibration)

    students, decomposed = {}, {}
    for name, student, method, level, options, inputs in plan:
        decomposed[name] = stages.run(
            f"decompose {name}",
            student,
            made,
            lambda student=student, method=method, level=level, options=options: _decomposed(
                decompose_to_dir(
                    teacher, student, method, compression=level, calibration=moments, overwrite=True, **options
                )
            ),
            inputs,
        )
        students[name] = student
        perplexities[name] = perplexity_stage(name, student.name, student, inputs)
    moments = None  # about 1 GB for SmolLM2

    healed, curves = {}, {}
    heal_level = s.compressions[0]
    first = [label(m, heal_level) for m in s.methods]
    to_heal = s.heal_methods or [min(s.methods, key=lambda m: perplexities[label(m, heal_level)]["perplexity"])]
    for method in to_heal:
        name, key = label(method, heal_level), slug(method, heal_level)
        dest = out / "healed" / key
        settings = dict(
            max_steps=s.heal_steps,
            per_device_train_batch_size=s.batch_size,
            per_device_eval_batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            logging_steps=s.eval_steps,
            eval_strategy="steps",
            eval_steps=s.eval_steps,
            eval_on_start=True,
            save_steps=100000,
            seed=s.seed,
        )
        stages.run(
            f"heal {name}",
            dest,
            run_dir.is_finished,
            lambda dest=dest, student=students[name], settings=settings: distill_general(
                teacher,
                student,
                None,
                dest,
                training_args(dest / run_dir.CHECKPOINTS, recipes.GENERAL_TRAINING, **settings),
                corpus=[data / "train.txt"],
                eval_corpus=[data / "heldout.txt"],
                seq_length=s.heal_seq_length,
                max_train_samples=s.heal_steps * s.batch_size,
                overwrite=True,
            ),
            {"student": stages.inputs(f"decompose {name}"), "training": settings, "seq_length": s.heal_seq_length},
        )
        healed[f"{name} healed"] = dest
        curves[name] = history(dest)
        perplexities[f"{name} healed"] = perplexity_stage(
            f"{name} healed", f"{key}-healed", dest, stages.inputs(f"heal {name}")
        )

    # the students of the first level, healed where they were (a student's speed does not change with healing)
    finals = {"dense": teacher}
    for n in first:
        finals |= {f"{n} healed": healed[f"{n} healed"]} if f"{n} healed" in healed else {n: students[n]}
    upstream = {n: str(p) for n, p in finals.items()} | {"heal": [stages.inputs(f"heal {n}") for n in curves]}
    speed_path = out / "decode_speed.json"
    speed = stages.run(
        "decode speed",
        speed_path,
        Path.is_file,
        lambda: _write(
            speed_path,
            decode_speed(
                {n: load_model(p, "causal_lm") for n, p in finals.items()},
                prompt_tokens=s.decode_prompt_tokens,
                new_tokens=s.decode_new_tokens,
                seconds=s.decode_seconds,
            ),
        ),
        upstream | {"prompt_tokens": s.decode_prompt_tokens, "new_tokens": s.decode_new_tokens},
    )
    said_path = out / "continuations.json"
    speakers = {"dense": teacher} | {n: students[n] for n in first} | healed
    said = stages.run(
        "continuations",
        said_path,
        Path.is_file,
        lambda: _write(
            said_path,
            {
                n: continuations(load_model(p, "causal_lm"), tokenizer, s.prompts, s.new_tokens)
                for n, p in speakers.items()
            },
        ),
        upstream
        | {"students": [stages.inputs(f"decompose {n}") for n in students], "prompts": s.prompts, "new": s.new_tokens},
    )
    run = {
        "title": f"tensorslim demo: {'SmolLM2-135M' if s.teacher is None else teacher.name} on WikiText-2",
        "teacher": str(teacher),
        "methods": s.methods,
        "compressions": s.compressions,
        "perplexity": perplexities,
        "decomposition": decomposed,
        "healing": {"level": heal_level, "curves": curves, "steps": s.heal_steps, "eval_steps": s.eval_steps},
        "speed": speed,
        "prompts": s.prompts,
        "continuations": said,
        "settings": _settings(s, teacher, files),
        "stages": stages.stages(),
    }
    run["report_paths"] = {k: str(v) for k, v in render_llm_report(run, out / "report").items()}
    finish_dir(out, s.out, COMMAND)
    return run


def _calibrate(stages: StageRunner, teacher: Path, tokenizer, calibration: dict) -> tuple:
    """Stage `calibration`: the (moments, record) of the dense model streamed over the calibration
    text (compress.calibration); stages.json keeps the record, the moments stay in memory."""
    from ..compress.calibration import calibrate, calibration_data
    from ..compress.loading import load_model

    found: list = []

    def work() -> dict:
        model = load_model(teacher, "causal_lm")
        data = calibration_data(
            model.config,
            calibration["data"],
            tokenizer,
            samples=calibration["samples"],
            seq_length=calibration["seq_length"],
            seed=calibration["seed"],
        )
        found.append(calibrate(model, data, ops="all"))
        return found[0][1]

    stages.run("calibration", Path(calibration["data"]), None, work, calibration)
    return found[0]


def _decomposed(record: dict) -> dict:
    """What the report reads of a decomposition record."""
    keys = ("method", "rank", "layer_rank", "relative_error", "calibrated_error", "decomposed_weights", "parameters")
    return {k: record.get(k) for k in keys} | {"seconds": record["seconds"].get("total")}


def _write(path: Path, value):
    write_json(path, value)
    return value


def _settings(s: LlmDemoSettings, teacher: Path, files: dict[str, Path]) -> dict:
    values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
    return values | {"teacher_source": str(teacher)} | {f"{k}_text": str(v) for k, v in files.items()}
