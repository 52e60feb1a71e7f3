"""The GLUE task registry: each task's labels, metric, splits, lengths and file layouts (see docs/glue.md)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ...errors import TensorslimError

logger = logging.getLogger(__name__)

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
