"""GLUE tasks: the task registry, TSV readers and writers, metrics and GLUE-server prediction files.

Files follow the layout of the official GLUE download script (``<glue_dir>/<TASK>/<split>.tsv``,
tab-separated, no quoting, UTF-8): CoLA train/dev have no header, every other file has one, and
columns are found by header name. The diagnostic set AX lives in ``<glue_dir>/diagnostic/diagnostic.tsv``
and is predicted with an MNLI model. Labels map to integers in the order of transformers' GLUE
processors (MNLI: contradiction, entailment, neutral; QNLI, RTE: entailment, not_entailment; others
"0", "1"); STS-B labels are float scores in [0, 5]. See docs/glue.md.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TensorslimError
from ..io import atomic_file

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "Example",
    "GlueTask",
    "check_label_mapping",
    "compute_metrics",
    "get_task",
    "label_permutation",
    "load_examples",
    "read_tsv",
    "write_predictions",
    "write_tsv",
]

TRAIN_SPLITS = ("train", "train_aug")


@dataclass(frozen=True)
class _Layout:
    """Columns of one kind of file: text/label/id columns by header name, or by index when headerless."""

    header: tuple[str, ...] | None  # the official header; None for headerless files (CoLA train/dev)
    text_a: str | int
    text_b: str | int | None = None
    label: str | int | None = None  # None in test files
    guid: str | int | None = None  # id column; None -> the row number

    def index(self, column: str | int | None) -> int | None:
        """Column index in the official layout."""
        if column is None or isinstance(column, int):
            return column
        return self.header.index(column)


_MNLI_PREFIX = (
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
)
_STSB_PREFIX = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")
_MRPC_STRINGS = ("#1 ID", "#2 ID", "#1 String", "#2 String")


def _pair(header: tuple[str, ...], a: str, b: str | None, label: str | None, guid: str | None = "index") -> _Layout:
    return _Layout(header, a, b, label, guid)


# split kind ("train", "dev", "test") -> layout; train_aug and dev_matched/... map onto these kinds.
_LAYOUTS: dict[str, dict[str, _Layout]] = {
    "CoLA": {
        "train": _Layout(None, 3, None, 1, None),
        "dev": _Layout(None, 3, None, 1, None),
        "test": _pair(("index", "sentence"), "sentence", None, None),
    },
    "SST-2": {
        "train": _pair(("sentence", "label"), "sentence", None, "label", None),
        "dev": _pair(("sentence", "label"), "sentence", None, "label", None),
        "test": _pair(("index", "sentence"), "sentence", None, None),
    },
    "MRPC": {
        "train": _pair(("Quality", *_MRPC_STRINGS), "#1 String", "#2 String", "Quality", None),
        "dev": _pair(("Quality", *_MRPC_STRINGS), "#1 String", "#2 String", "Quality", None),
        "test": _pair(("index", *_MRPC_STRINGS), "#1 String", "#2 String", None),
    },
    "STS-B": {
        "train": _pair((*_STSB_PREFIX, "score"), "sentence1", "sentence2", "score"),
        "dev": _pair((*_STSB_PREFIX, "score"), "sentence1", "sentence2", "score"),
        "test": _pair(_STSB_PREFIX, "sentence1", "sentence2", None),
    },
    "QQP": {
        "train": _pair(
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            "question1",
            "question2",
            "is_duplicate",
            "id",
        ),
        "dev": _pair(
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            "question1",
            "question2",
            "is_duplicate",
            "id",
        ),
        "test": _pair(("id", "question1", "question2"), "question1", "question2", None, "id"),
    },
    "MNLI": {
        "train": _pair((*_MNLI_PREFIX, "label1", "gold_label"), "sentence1", "sentence2", "gold_label"),
        "dev": _pair(
            (*_MNLI_PREFIX, "label1", "label2", "label3", "label4", "label5", "gold_label"),
            "sentence1",
            "sentence2",
            "gold_label",
        ),
        "test": _pair(_MNLI_PREFIX, "sentence1", "sentence2", None),
    },
    "QNLI": {
        "train": _pair(("index", "question", "sentence", "label"), "question", "sentence", "label"),
        "dev": _pair(("index", "question", "sentence", "label"), "question", "sentence", "label"),
        "test": _pair(("index", "question", "sentence"), "question", "sentence", None),
    },
    "AX": {"test": _pair(("index", "sentence1", "sentence2"), "sentence1", "sentence2", None)},
    # Not GLUE: the BBC News topic task that `tensorslim demo` prepares from a PyPI package
    # (tensorslim.data.packaged), in SST-2's layout so that every command can use it.
    "BBC-News": {
        "train": _pair(("sentence", "label"), "sentence", None, "label", None),
        "dev": _pair(("sentence", "label"), "sentence", None, "label", None),
    },
}
for _name in ("RTE", "WNLI"):
    _LAYOUTS[_name] = {
        "train": _pair(("index", "sentence1", "sentence2", "label"), "sentence1", "sentence2", "label"),
        "dev": _pair(("index", "sentence1", "sentence2", "label"), "sentence1", "sentence2", "label"),
        "test": _pair(("index", "sentence1", "sentence2"), "sentence1", "sentence2", None),
    }

#: First column names of every official header: how `read_tsv` tells a header from a CoLA data row.
_HEADER_FIRST_COLUMNS = frozenset(
    layout.header[0] for layouts in _LAYOUTS.values() for layout in layouts.values() if layout.header
)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: label order, metric, splits and the paper's default sequence length."""

    name: str  # canonical, e.g. "SST-2", "MNLI", "STS-B", "AX"
    labels: tuple[str, ...] | None  # official label order; None for regression (STS-B)
    metric: str  # "mcc" | "accuracy" | "f1_accuracy" | "pearson_spearman"
    dev_splits: tuple[str, ...]  # ("dev",), MNLI: ("dev_matched", "dev_mismatched"), AX: ()
    test_splits: tuple[str, ...]  # ("test",), MNLI: ("test_matched", "test_mismatched")
    max_seq_length: int  # 64 for CoLA and SST-2, 128 otherwise

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Width of the classifier: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name `load_examples` accepts for this task."""
        train = () if self.name == "AX" else TRAIN_SPLITS
        return (*train, *self.dev_splits, *self.test_splits)

    def text_fields(self, split: str) -> tuple[int, int | None]:
        """Column indices (text_a, text_b) in that split's rows, in the official layout."""
        layout = _layout(self, split)
        return layout.index(layout.text_a), layout.index(layout.text_b)


def _task(name, labels, metric, dev=("dev",), test=("test",), max_len=128) -> GlueTask:
    return GlueTask(name, labels, metric, dev, test, max_len)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("contradiction", "entailment", "neutral")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        _task("CoLA", _BINARY, "mcc", max_len=64),
        _task("SST-2", _BINARY, "accuracy", max_len=64),
        _task("MRPC", _BINARY, "f1_accuracy"),
        _task("STS-B", None, "pearson_spearman"),
        _task("QQP", _BINARY, "f1_accuracy"),
        _task("MNLI", _NLI3, "accuracy", ("dev_matched", "dev_mismatched"), ("test_matched", "test_mismatched")),
        _task("QNLI", _NLI2, "accuracy"),
        _task("RTE", _NLI2, "accuracy"),
        _task("WNLI", _BINARY, "accuracy"),
        # The diagnostic set: MNLI labels, test only, scored by the server with Matthews correlation.
        _task("AX", _NLI3, "mcc", dev=()),
        _task("BBC-News", ("business", "entertainment", "politics", "sport", "tech"), "accuracy", test=()),
    )
}

#: Task folder in the download-script layout, and the file for each split.
_DIRECTORIES = {name: name for name in TASKS} | {"AX": "diagnostic"}
_FILENAMES = {("AX", "test"): "diagnostic.tsv"}

#: GLUE server file names per (task, test split), and the row counts the server expects.
_SUBMISSION = {
    ("CoLA", "test"): ("CoLA.tsv", 1063),
    ("SST-2", "test"): ("SST-2.tsv", 1821),
    ("MRPC", "test"): ("MRPC.tsv", 1725),
    ("STS-B", "test"): ("STS-B.tsv", 1379),
    ("QQP", "test"): ("QQP.tsv", 390965),
    ("MNLI", "test_matched"): ("MNLI-m.tsv", 9796),
    ("MNLI", "test_mismatched"): ("MNLI-mm.tsv", 9847),
    ("QNLI", "test"): ("QNLI.tsv", 5463),
    ("RTE", "test"): ("RTE.tsv", 3000),
    ("WNLI", "test"): ("WNLI.tsv", 146),
    ("AX", "test"): ("AX.tsv", 1104),
}

#: Other names models use for a task's labels (normalised: lower case, "_" for spaces and dashes).
_LABEL_ALIASES = {
    "CoLA": {"unacceptable": "0", "acceptable": "1"},
    "SST-2": {"negative": "0", "positive": "1"},
    "MRPC": {"not_equivalent": "0", "equivalent": "1"},
    "QQP": {"not_duplicate": "0", "duplicate": "1"},
    "WNLI": {"not_entailment": "0", "entailment": "1"},
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_normalise(n): n for n in TASKS} | {"diagnostic": "AX"}


def get_task(name: str | GlueTask) -> GlueTask:
    """The task called `name`, ignoring case and punctuation ("sst2", "sst-2", "SST-2")."""
    if isinstance(name, GlueTask):
        return name
    canonical = _ALIASES.get(_normalise(str(name)))
    if canonical is None:
        raise TensorslimError(f"unknown GLUE task {name!r}", f"use one of: {', '.join(TASKS)}")
    return TASKS[canonical]


def _split_kind(task: GlueTask, split: str) -> str:
    """Which layout a split's file has: "train", "dev" or "test"."""
    if split not in task.splits:
        raise TensorslimError(f"{task.name} has no split {split!r}", f"use one of: {', '.join(task.splits)}")
    if split in TRAIN_SPLITS:
        return "train"
    return "dev" if split in task.dev_splits else "test"


def _layout(task: GlueTask, split: str) -> _Layout:
    return _LAYOUTS[task.name][_split_kind(task, split)]


# --------------------------------------------------------------------------------------------- TSV


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line, streamed."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row:
                    yield reader.line_num, row
    except UnicodeDecodeError as err:
        raise _not_utf8(path) from err
    except csv.Error as err:
        raise TensorslimError(
            f"{path}:{reader.line_num}: unreadable TSV ({err})",
            "fix that line: fields are separated by tabs, one record a line",
        ) from err
    except OSError as err:
        raise TensorslimError(f"cannot read {path}: {err.strerror}", "check the file's permissions") from err


def _not_utf8(path: Path) -> TensorslimError:
    """The error for a file that is not UTF-8, naming the line and offset of the first bad byte."""
    fix = "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return TensorslimError(f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})", fix)
    return TensorslimError(f"{path}: not UTF-8", fix)


def _scan_tsv(path: Path, has_header: bool | None) -> tuple[list[str] | None, Iterator[tuple[int, list[str]]]]:
    """The header (or None) and a stream of (line number, row) with the width checked row by row."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TensorslimError(
            f"TSV file {path} {what}", "check the path (GLUE files are <glue_dir>/<TASK>/<split>.tsv)"
        )
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise TensorslimError(f"{path} is empty", "point at a non-empty GLUE TSV file (re-download it if truncated)")
    if has_header is None:
        has_header = first[1][0] in _HEADER_FIRST_COLUMNS
    width, what = len(first[1]), "header" if has_header else "first row"

    def rows() -> Iterator[tuple[int, list[str]]]:
        if not has_header:
            yield first
        for line, row in records:
            if len(row) != width:
                raise TensorslimError(
                    f"{path}:{line}: {len(row)} tab-separated fields where the {what} has {width}",
                    "fix or remove that line (a stray tab or line break inside a text field splits a record)",
                )
            yield line, row

    return (first[1] if has_header else None), rows()


def read_tsv(path: str | os.PathLike, *, has_header: bool | None = None) -> tuple[list[str] | None, list[list[str]]]:
    """Read a GLUE TSV file: (header or None, rows), every row a list of str.

    Dialect: tab-separated, no quoting (csv.QUOTE_NONE), UTF-8 (a leading BOM is dropped), blank
    lines skipped. `has_header=None` detects the header by its first column name ("index", "id",
    "sentence", "Quality"): only CoLA's train/dev files have none. Every row must have as many
    fields as the header (or the first row); anything else is a TensorslimError naming file and line.
    """
    header, rows = _scan_tsv(Path(path), has_header)
    return header, [row for _, row in rows]


def write_tsv(path: str | os.PathLike, header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> None:
    """Write rows (and a header unless None) in `read_tsv`'s dialect, atomically.

    Fields are converted with str(); a field with a tab or line break, a row of the wrong width or
    a row that would be a blank line raises TensorslimError, since the file could not be read back.
    """
    records = ([list(header)] if header is not None else []) + [list(row) for row in rows]
    width = len(records[0]) if records else 0
    lines = []
    for number, record in enumerate(records):
        what = "header" if header is not None and number == 0 else f"row {number - (header is not None)}"
        fields = [str(field) for field in record]
        if len(fields) != width:
            raise TensorslimError(
                f"cannot write {path}: {what} has {len(fields)} fields, expected {width}",
                "give every row as many fields as the header",
            )
        if fields in ([], [""]):
            raise TensorslimError(
                f"cannot write {path}: {what} is empty and would be a blank line", "drop empty rows before writing"
            )
        for column, field in enumerate(fields):
            if any(char in field for char in "\t\n\r"):
                raise TensorslimError(
                    f"cannot write {path}: {what}, column {column} contains a tab or line break: {field[:60]!r}",
                    "replace tabs and line breaks in text with spaces",
                )
        lines.append("\t".join(fields) + "\n")
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(lines)


# ----------------------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One GLUE example. label: index into task.labels, a float score for STS-B, None in test files."""

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def task_file(glue_dir: Path, task: GlueTask, split: str) -> Path:
    """Resolve a split's file: `glue_dir` may be the GLUE root, the task's folder, or the .tsv itself."""
    filename = _FILENAMES.get((task.name, split), f"{split}.tsv")
    if glue_dir.is_file():
        return glue_dir
    if not glue_dir.is_dir():
        raise TensorslimError(
            f"GLUE directory {glue_dir} does not exist",
            "pass the folder made by the GLUE download script (it holds CoLA/, SST-2/, ...)",
        )
    candidates = [glue_dir / _DIRECTORIES[task.name] / filename]
    candidates += [
        d / filename
        for d in sorted(glue_dir.iterdir())
        if d.is_dir() and _normalise(d.name) in (_normalise(task.name), _normalise(_DIRECTORIES[task.name]))
    ]
    candidates.append(glue_dir / filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TensorslimError(
        f"no {task.name} {split} file: looked for {candidates[0]} and {glue_dir / filename}",
        f"point at the GLUE root (with {_DIRECTORIES[task.name]}/{filename}), at the task folder, or at the .tsv file",
    )


def _column(
    path: Path, header: list[str] | None, layout: _Layout, column: str | int | None, task: GlueTask, split: str
) -> int | None:
    """Index of a layout column in this file, found by header name."""
    if column is None or isinstance(column, int):
        return column
    if header is None or column not in header:
        expected = "\t".join(layout.header)
        raise TensorslimError(
            f"{path}:1: header is not a {task.name} {split} header: no column {column!r} in {header}",
            f"check the task name and the file; a {task.name} {split} file starts with the line {expected!r}",
        )
    return header.index(column)


def _parse_label(task: GlueTask, value: str, where: str) -> int | float:
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise TensorslimError(
                f"{where}: label {value!r} is not a number", f"{task.name} labels are scores in [0, 5]"
            )
        return score
    try:
        return task.labels.index(value)
    except ValueError:
        raise TensorslimError(
            f"{where}: label {value!r} is not a {task.name} label",
            f"{task.name} labels are {', '.join(task.labels)}; check the task name and the file",
        ) from None


def load_examples(glue_dir: str | os.PathLike, task: str | GlueTask, split: str) -> list[Example]:
    """Read one split of a task as Examples, in file order.

    `glue_dir` is the GLUE root (``<glue_dir>/<TASK>/<split>.tsv``), a task folder holding the split
    files directly (e.g. one seed of a k-shot sample), or the .tsv file itself. Splits: "train",
    "train_aug" (train_aug.tsv, same format as train.tsv), the task's dev_splits and test_splits.
    guid is "<split>-<id column>" (the row number where the file has no id column).
    """
    task = get_task(task)
    layout = _layout(task, split)
    path = task_file(Path(glue_dir), task, split)
    header, rows = _scan_tsv(path, has_header=layout.header is not None)
    is_test = split in task.test_splits
    a, b, guid_col = (
        _column(path, header, layout, column, task, split) for column in (layout.text_a, layout.text_b, layout.guid)
    )
    label_col = None if is_test else _column(path, header, layout, layout.label, task, split)
    examples = []
    for number, (line, row) in enumerate(rows):
        if header is None and number == 0 and len(row) <= max(a, label_col):
            raise TensorslimError(
                f"{path}:{line}: {len(row)} fields, a {task.name} {split} row has 4",
                f"check the task name; {task.name} {split} rows are source, label, original label, sentence",
            )
        ident = row[guid_col] if guid_col is not None else str(number)
        label = None if is_test else _parse_label(task, row[label_col], f"{path}:{line}")
        examples.append(Example(f"{split}-{ident}", row[a], None if b is None else row[b], label))
    if not examples:
        raise TensorslimError(f"{path} has a header but no rows", "point at a complete GLUE file")
    return examples


# ------------------------------------------------------------------------------------------ metrics


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
