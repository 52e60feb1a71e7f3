"""GLUE scores by each task's metric, GLUE-server prediction files and label orders of classifiers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import TensorslimError
from .files import write_tsv
from .tasks import _LABEL_ALIASES, _SUBMISSION, GlueTask, get_task

logger = logging.getLogger(__name__)


def _as_labels(task: GlueTask, values, what: str) -> np.ndarray:
    """Predictions or references as a 1-D array: label ids (argmax of (n, num_labels) logits) or scores."""
    if any(v is None for v in (values if isinstance(values, Sequence) else ())):
        raise TensorslimError(
            f"{what} contain None (test splits have no labels)",
            "score a dev split; for test splits write prediction files instead",
        )
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TensorslimError(f"{what} are not numbers ({err})", "pass label ids, scores or logits") from err
    if array.ndim == 2 and array.shape[1] == task.num_labels:
        array = array[:, 0] if task.is_regression else array.argmax(axis=1).astype(np.float64)
    if array.ndim != 1:
        raise TensorslimError(
            f"{what} have shape {array.shape}",
            f"pass a 1-D array, or logits of shape (n, {task.num_labels}) for {task.name}",
        )
    if not np.isfinite(array).all():
        raise TensorslimError(f"{what} contain NaN or infinity", "check the model's outputs")
    if task.is_regression:
        return array
    invalid = (array != np.round(array)) | (array < 0) | (array >= task.num_labels)
    if invalid.any():
        bad = array[invalid][0]
        raise TensorslimError(
            f"{what} hold {bad:g}, not a {task.name} label id",
            f"label ids are 0..{task.num_labels - 1} ({', '.join(task.labels)})",
        )
    return array.astype(np.int64)


def _correlation(kind: str, predictions: np.ndarray, references: np.ndarray) -> float:
    """Pearson or Spearman correlation; 0.0 when either side is constant (where it is undefined)."""
    from scipy.stats import pearsonr, spearmanr

    if np.ptp(predictions) == 0 or np.ptp(references) == 0:
        logger.warning("%s correlation is undefined for constant predictions or references; reporting 0.0", kind)
        return 0.0
    return float((pearsonr if kind == "pearson" else spearmanr)(predictions, references)[0])


def compute_metrics(task: str | GlueTask, predictions, references) -> dict[str, float]:
    """The task's GLUE metrics as fractions, plus "score": its headline number on the leaderboard.

    predictions: label ids, (n, num_labels) logits, or scores for STS-B; references: label ids or scores.
    CoLA/AX: mcc; MRPC/QQP: f1 (positive class 1), accuracy and their mean f1_accuracy; STS-B:
    pearson, spearman and their mean pearson_spearman; the others accuracy.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    task = get_task(task)
    pred = _as_labels(task, predictions, "predictions")
    ref = _as_labels(task, references, "references")
    if len(pred) != len(ref) or len(pred) == 0:
        raise TensorslimError(
            f"{len(pred)} predictions for {len(ref)} references", "pass one prediction per reference (and at least one)"
        )
    if task.metric == "pearson_spearman":
        result = {"pearson": _correlation("pearson", pred, ref), "spearman": _correlation("spearman", pred, ref)}
        result["pearson_spearman"] = (result["pearson"] + result["spearman"]) / 2
    elif task.metric == "mcc":
        result = {"mcc": float(matthews_corrcoef(ref, pred))}
    else:
        result = {"accuracy": float(accuracy_score(ref, pred))}
        if task.metric == "f1_accuracy":
            result["f1"] = float(f1_score(ref, pred, pos_label=1, average="binary", zero_division=0.0))
            result["f1_accuracy"] = (result["f1"] + result["accuracy"]) / 2
    result["score"] = result[task.metric]
    return result


# -------------------------------------------------------------------------------------- predictions


def prediction_path(task: str | GlueTask, out_dir: str | os.PathLike, split: str = "test") -> Path:
    """Where `write_predictions` writes the predictions of `split` (see there for the names)."""
    task = get_task(task)
    if split not in task.test_splits:
        raise TensorslimError(
            f"{task.name} has no test split {split!r}",
            f"use one of: {', '.join(task.test_splits) or '(none: score dev splits instead)'}",
        )
    return Path(out_dir) / _SUBMISSION[(task.name, split)][0]


def write_predictions(task: str | GlueTask, predictions, out_dir: str | os.PathLike, split: str = "test") -> Path:
    """Write one GLUE-server prediction file into `out_dir` and return its path.

    Names: CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv (split "test_matched"),
    MNLI-mm.tsv ("test_mismatched"), QNLI.tsv, RTE.tsv, WNLI.tsv, AX.tsv. Content: header
    "index<TAB>prediction", then one row per test example in file order: the label string
    ("entailment", ...; "0"/"1" for CoLA, SST-2, MRPC, QQP, WNLI) or, for STS-B, the score clipped
    to [0, 5] with 3 decimals. predictions: label ids, (n, num_labels) logits, or scores.
    """
    task = get_task(task)
    path = prediction_path(task, out_dir, split)
    values = _as_labels(task, predictions, "predictions")
    filename, expected = _SUBMISSION[(task.name, split)]
    if len(values) != expected:
        logger.warning(
            "%s: %d predictions, but the GLUE server expects %d for %s %s",
            filename,
            len(values),
            expected,
            task.name,
            split,
        )
    if task.is_regression:
        cells = [f"{v:.3f}" for v in np.clip(values, 0.0, 5.0)]
    else:
        cells = [task.labels[v] for v in values]
    write_tsv(path, ["index", "prediction"], [[str(i), cell] for i, cell in enumerate(cells)])
    logger.info("wrote %d %s predictions to %s", len(cells), task.name, path)
    return path


# ------------------------------------------------------------------------------------ label mapping


def _config_labels(config) -> dict[int, str] | None:
    """id2label of a transformers config (object or dict), or None when it carries only defaults."""
    id2label = config.get("id2label") if isinstance(config, Mapping) else getattr(config, "id2label", None)
    if id2label is None:
        label2id = config.get("label2id") if isinstance(config, Mapping) else getattr(config, "label2id", None)
        id2label = {int(i): name for name, i in (label2id or {}).items()} or None
    if id2label is None:
        return None
    id2label = {int(i): str(name) for i, name in id2label.items()}
    if all(re.fullmatch(r"LABEL_\d+", name) for name in id2label.values()):
        return None
    return id2label


def _config_num_labels(config) -> int:
    if isinstance(config, Mapping):
        labels = config.get("id2label") or config.get("label2id")
        return len(labels) if labels else int(config.get("num_labels", 2))
    return int(getattr(config, "num_labels", None) or 2)


def label_permutation(task: str | GlueTask, config) -> list[int] | None:
    """Reordering of a model's outputs into the task's label order, or None when they already agree.

    `config` is a transformers config (or its dict). With ``perm`` returned, ``logits[..., perm]``
    has column i = the task's label i. The model's label names are matched case-insensitively, with
    common synonyms ("positive"/"negative" for SST-2, "equivalent" for MRPC, ...). Raises
    TensorslimError when the label count differs or the names are not the task's labels.
    """
    task = get_task(task)
    num_labels = _config_num_labels(config)
    if num_labels != task.num_labels:
        kind = "a regression head (num_labels=1)" if task.is_regression else f"num_labels={task.num_labels}"
        raise TensorslimError(
            f"the model has num_labels={num_labels} but {task.name} needs {kind}",
            f"use a teacher fine-tuned on {task.name}, or load it with num_labels={task.num_labels} "
            "and fine-tune it on the task first",
        )
    id2label = _config_labels(config)
    if task.is_regression or id2label is None:
        return None
    aliases = _LABEL_ALIASES.get(task.name, {})
    names = {i: re.sub(r"[\s\-]+", "_", name.strip().lower()) for i, name in id2label.items()}
    names = {i: aliases.get(name, name) for i, name in names.items()}
    if sorted(names.values()) != sorted(task.labels) or sorted(names) != list(range(task.num_labels)):
        raise TensorslimError(
            f"the model's labels {id2label} are not the {task.name} labels {task.labels}",
            f"check that the teacher was fine-tuned on {task.name}; if it was, set its config's id2label to "
            f"{dict(enumerate(task.labels))}",
        )
    position = {name: i for i, name in names.items()}
    perm = [position[label] for label in task.labels]
    return None if perm == list(range(task.num_labels)) else perm


def check_label_mapping(task: str | GlueTask, config) -> None:
    """Raise TensorslimError unless the model's label count and order are exactly the task's."""
    task = get_task(task)
    perm = label_permutation(task, config)
    if perm is not None:
        id2label = _config_labels(config)
        raise TensorslimError(
            f"the model orders the {task.name} labels as {[id2label[i] for i in range(len(id2label))]}, "
            f"the task as {list(task.labels)}",
            f"reorder the model's outputs with logits[..., {perm}] (tensorslim.data.glue.label_permutation), "
            "or permute the classifier rows the same way and set id2label to the task's order",
        )
