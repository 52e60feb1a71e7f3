"""GLUE TSV files: strict readers and writers, task files and labelled examples (see docs/glue.md)."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import TensorslimError
from ...io import atomic_file
from .tasks import _DIRECTORIES, _FILENAMES, _HEADER_FIRST_COLUMNS, GlueTask, _Layout, _layout, _normalise, get_task

logger = logging.getLogger(__name__)


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
