"""GLUE evaluation of a sequence classifier: dev scores and GLUE-server test prediction files.

Every dev split gets its own loader (MNLI: dev_matched and dev_mismatched separately). Results are
written as JSON: {"task", "model", "max_seq_length", "splits": {split: metrics}, "examples": {split:
count}, "score", "baseline"} where "score" is the mean of the dev splits' headline scores and
"baseline" scores a constant predictor on the same dev examples with the same metric (see
constant_baseline), so a score can be read against what predicting one answer for everything
already gets. Given the teacher's results, also "teacher" and "margin_kept" (see margin_kept).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.glue import (
    compute_metrics,
    get_task,
    label_permutation,
    load_examples,
    prediction_path,
    task_file,
    write_predictions,
)
from ..errors import TensorslimError
from ..io import check_not_input, write_json
from ..validate import check_at_least, check_device, check_output_file
from . import run_dir
from .glue_data import collator, encode_split
from .models import check_max_length, check_trained_task, load_classifier, load_config, load_tokenizer

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"


def trained_max_length(model_dir: Path) -> int | None:
    """The max_seq_length a tensorslim command trained `model_dir` with, if recorded."""
    info = Path(model_dir) / run_dir.INFO_FILE
    return json.loads(info.read_text()).get("max_seq_length") if info.is_file() else None


@torch.no_grad()
def predict(
    model, dataset, tokenizer, batch_size: int = 64, device: str | torch.device = "cpu", desc: str = "predict"
) -> np.ndarray:
    """(n, num_labels) logits of `model` on a tokenized dataset, in dataset order."""
    model.eval().to(device)
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator(tokenizer))
    outputs = []
    for batch in tqdm(loader, desc=desc, leave=False):
        outputs.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(outputs).numpy()


def check_outputs(task, glue_dir: str | Path, model_dir: Path, out: Path, predict_test: bool) -> None:
    """Refuse, before any work, outputs that would overwrite an input or a file this command did not write."""
    if out.exists() and not out.is_dir():
        raise TensorslimError(f"--out {out} is a file", "pass a directory for --out")
    splits = [*task.dev_splits, *(task.test_splits if predict_test else ())]
    sources = [task_file(Path(glue_dir), task, split) for split in splits]
    check_output_file(out / RESULTS_FILE, "--out", inputs=sources, ours=("task", "splits"))
    for split in task.test_splits if predict_test else ():
        path = prediction_path(task, out, split)
        check_not_input(path, sources, "--out")
        if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith("index\tprediction"):
            raise TensorslimError(f"{path} exists and is not a GLUE prediction file", "choose another --out")


def constant_prediction(task, glue_dir: str | Path) -> tuple[float, str, str]:
    """(prediction, description, source split) of the constant baseline of `task`.

    Classification: the most frequent label of the training split (ties: the first in label order);
    regression (STS-B): the mean training score. Falls back to the first dev split's labels when the
    task has no train.tsv under `glue_dir`."""
    task = get_task(task)
    source = "train"
    try:
        if task_file(Path(glue_dir), task, source) == Path(glue_dir):  # glue_dir is one .tsv: the dev file
            source = task.dev_splits[0]
    except TensorslimError:
        source = task.dev_splits[0]
    labels = [e.label for e in load_examples(glue_dir, task, source)]
    if task.is_regression:
        mean = float(np.mean(labels))
        return mean, f"the mean {source} score {mean:.3f}", source
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=task.num_labels)
    label = int(counts.argmax())
    return (
        float(label),
        f"the majority {source} label {task.labels[label]!r} ({counts[label] / counts.sum():.1%})",
        source,
    )


def constant_baseline(task, glue_dir: str | Path, references: dict[str, np.ndarray]) -> dict:
    """Scores of the constant baseline (constant_prediction) on each split's `references`, by the
    task's own metric: {"predictor", "source", "splits": {split: metrics}, "score": mean headline}."""
    task = get_task(task)
    value, description, source = constant_prediction(task, glue_dir)
    splits = {split: compute_metrics(task, np.full(len(ref), value), ref) for split, ref in references.items()}
    scores = [m["score"] for m in splits.values()]
    return {
        "predictor": f"always {description}",
        "source": source,
        "splits": splits,
        "score": float(np.mean(scores)) if scores else None,
    }


def margin_kept(score: float | None, teacher: float | None, baseline: float | None) -> float | None:
    """(score - baseline) / (teacher - baseline): the share of the teacher's lead over the constant
    baseline that a student keeps; None when undefined (a missing score, or teacher <= baseline)."""
    values = (score, teacher, baseline)
    if any(v is None or not np.isfinite(v) for v in values) or teacher <= baseline:
        return None
    return (score - baseline) / (teacher - baseline)


def load_teacher_results(path: str | Path, task: str) -> dict:
    """The teacher's evaluate() results from its eval_results.json (or a directory holding one)."""
    path = Path(path)
    path = path / RESULTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise TensorslimError(f"no teacher results at {path}", "evaluate the teacher first, then pass its directory")
    results = json.loads(path.read_text())
    if results.get("task") != task or results.get("score") is None:
        raise TensorslimError(
            f"{path} holds {results.get('task')!r} results, not a {task} score",
            f"pass the teacher's {task} eval_results.json",
        )
    return results


def baseline_dev(results: dict) -> dict | None:
    """The report's baseline entry from evaluate() results: {"predictor", "dev": first dev split's
    metrics plus the mean "score"}; None for results written before baselines were recorded."""
    baseline = results.get("baseline")
    if not baseline:
        return None
    first = next(iter(baseline["splits"].values()))
    return {
        "predictor": baseline["predictor"],
        "source": baseline["source"],
        "dev": {**first, "score": baseline["score"]},
    }


def evaluate(
    model: str | Path,
    task: str,
    glue_dir: str | Path,
    out: str | Path | None = None,
    *,
    predict_test: bool = False,
    max_seq_length: int | None = None,
    batch_size: int = 64,
    max_eval_samples: int | None = None,
    device: str | None = None,
    teacher: str | Path | None = None,
) -> dict:
    """Score `model` on every dev split of `task`; with `predict_test` write test prediction files.

    Outputs go to `out` (default: the model directory): eval_results.json and, with
    `predict_test`, <TASK>.tsv files in GLUE-server format. `teacher`: the teacher's
    eval_results.json (or the directory holding it), scored on the same dev examples; adds
    "teacher" and "margin_kept" (see margin_kept). Returns the results dict.
    """
    teacher_results = load_teacher_results(teacher, get_task(task).name) if teacher is not None else None
    task = get_task(task)
    model_dir = Path(model)
    out = Path(out) if out is not None else model_dir
    config = load_config(model_dir)
    check_outputs(task, glue_dir, model_dir, out, predict_test)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--max-eval-samples", max_eval_samples, 1)
    device = check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    check_trained_task(model_dir, task)
    length = check_max_length(
        max_seq_length if max_seq_length is not None else trained_max_length(model_dir) or task.max_seq_length, config
    )
    tokenizer = load_tokenizer(model_dir)
    classifier = load_classifier(model_dir, task)
    perm = label_permutation(task, classifier.config)
    results = {"task": task.name, "model": str(model_dir), "max_seq_length": length, "splits": {}}
    references = {}
    for split in task.dev_splits:
        data = encode_split(glue_dir, task, split, tokenizer, length, max_eval_samples)
        logits = predict(classifier, data, tokenizer, batch_size, device, desc=f"{task.name} {split}")
        logits = logits[:, perm] if perm is not None else logits
        references[split] = np.asarray(data["labels"])
        results.setdefault("examples", {})[split] = len(references[split])
        results["splits"][split] = compute_metrics(task, logits, references[split])
        log.info("%s %s: %s", task.name, split, results["splits"][split])
    scores = [m["score"] for m in results["splits"].values()]
    results["score"] = float(np.mean(scores)) if scores else None
    results["baseline"] = constant_baseline(task, glue_dir, references)
    log.info("%s constant baseline (%s): %s", task.name, results["baseline"]["predictor"], results["baseline"]["score"])
    if teacher_results is not None:
        if teacher_results.get("examples", results["examples"]) != results["examples"]:
            raise TensorslimError(
                f"the teacher was scored on {teacher_results['examples']} dev examples, this model on "
                f"{results['examples']}",
                "evaluate both with the same --max-eval-samples",
            )
        results["teacher"] = {"model": teacher_results["model"], "score": teacher_results["score"]}
        results["margin_kept"] = margin_kept(results["score"], teacher_results["score"], results["baseline"]["score"])
    if predict_test:
        results["prediction_files"] = {}
        for split in task.test_splits:
            data = encode_split(glue_dir, task, split, tokenizer, length)
            logits = predict(classifier, data, tokenizer, batch_size, device, desc=f"{task.name} {split}")
            logits = logits[:, perm] if perm is not None else logits
            results["prediction_files"][split] = str(write_predictions(task, logits, out, split))
    write_json(out / RESULTS_FILE, results)
    return results
