"""tensorslim.data.glue: task registry, TSV reading and writing on the real GLUE files (metrics,
prediction files and label-order checks: tests/test_glue_metrics.py)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorslim.data.glue import (
    TASKS,
    Example,
    get_task,
    load_examples,
    read_tsv,
    write_tsv,
)
from tensorslim.errors import TensorslimError


@pytest.fixture(scope="module")
def glue(shared_data):
    return shared_data / "glue"


@pytest.fixture(scope="module")
def samples(shared_data):
    return shared_data / "glue_format_samples"


# ------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", ["sst2", "SST-2", "sst-2", "Sst_2", " SST 2 "])
def test_get_task_ignores_case_and_punctuation(name):
    assert get_task(name) is TASKS["SST-2"]


def test_get_task_unknown_lists_valid_names():
    with pytest.raises(TensorslimError) as err:
        get_task("imdb")
    message = str(err.value)
    assert "'imdb'" in message and all(name in message for name in TASKS)


def test_registry_matches_glue_conventions():
    # the nine GLUE tasks and the diagnostic set, then the demo's BBC News topic task (not GLUE)
    assert list(TASKS) == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI", "AX", "BBC-News"]
    assert TASKS["BBC-News"].labels == ("business", "entertainment", "politics", "sport", "tech")
    assert TASKS["MNLI"].labels == ("contradiction", "entailment", "neutral")
    assert TASKS["QNLI"].labels == TASKS["RTE"].labels == ("entailment", "not_entailment")
    assert TASKS["STS-B"].labels is None and TASKS["STS-B"].is_regression and TASKS["STS-B"].num_labels == 1
    assert {n for n, t in TASKS.items() if t.labels == ("0", "1")} == {"CoLA", "SST-2", "MRPC", "QQP", "WNLI"}
    assert {n: t.metric for n, t in TASKS.items() if t.metric != "accuracy"} == {
        "CoLA": "mcc",
        "MRPC": "f1_accuracy",
        "QQP": "f1_accuracy",
        "STS-B": "pearson_spearman",
        "AX": "mcc",
    }
    assert {n for n, t in TASKS.items() if t.max_seq_length == 64} == {"CoLA", "SST-2"}
    assert all(t.max_seq_length == 128 for n, t in TASKS.items() if n not in ("CoLA", "SST-2"))
    assert TASKS["MNLI"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["MNLI"].test_splits == ("test_matched", "test_mismatched")
    assert TASKS["AX"].dev_splits == () and TASKS["AX"].test_splits == ("test",)
    assert TASKS["MNLI"].num_labels == 3 and not TASKS["MNLI"].is_regression


@pytest.mark.parametrize(
    ("task", "split", "fields"),
    [
        ("CoLA", "train", (3, None)),
        ("CoLA", "train_aug", (3, None)),
        ("CoLA", "test", (1, None)),
        ("SST-2", "dev", (0, None)),
        ("SST-2", "test", (1, None)),
        ("MRPC", "train", (3, 4)),
        ("MRPC", "test", (3, 4)),
        ("STS-B", "dev", (7, 8)),
        ("STS-B", "test", (7, 8)),
        ("QQP", "train", (3, 4)),
        ("QQP", "test", (1, 2)),
        ("MNLI", "train", (8, 9)),
        ("MNLI", "dev_mismatched", (8, 9)),
        ("MNLI", "test_matched", (8, 9)),
        ("QNLI", "dev", (1, 2)),
        ("RTE", "train", (1, 2)),
        ("WNLI", "test", (1, 2)),
        ("AX", "test", (1, 2)),
    ],
)
def test_text_fields_in_official_layout(task, split, fields):
    assert TASKS[task].text_fields(split) == fields


def test_text_fields_rejects_unknown_split():
    with pytest.raises(TensorslimError, match="dev_matched"):
        TASKS["MNLI"].text_fields("dev")
    with pytest.raises(TensorslimError, match="no split 'train'"):
        TASKS["AX"].text_fields("train")


# --------------------------------------------------------------------------------- real GLUE files

# (task, split): rows (SOURCES.md), label counts (published class balances), first row's texts and label.
REAL = {
    ("CoLA", "train"): (
        8551,
        {1: 6023, 0: 2528},
        ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
    ),
    ("CoLA", "dev"): (1043, {1: 721, 0: 322}, ("The sailors rode the breeze clear of the rocks.", None, 1)),
    ("SST-2", "train"): (67349, {1: 37569, 0: 29780}, ("hide new secretions from the parental units ", None, 0)),
    ("SST-2", "dev"): (872, {1: 444, 0: 428}, ("it 's a charming and often affecting journey . ", None, 1)),
    ("MRPC", "train"): (
        3668,
        {1: 2474, 0: 1194},
        (
            'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
            'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
            "evidence .",
            1,
        ),
    ),
    ("MRPC", "dev"): (
        408,
        {1: 279, 0: 129},
        (
            "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
            '" The foodservice pie business does not fit our long-term growth strategy .',
            1,
        ),
    ),
    ("STS-B", "train"): (5749, None, ("A plane is taking off.", "An air plane is taking off.", 5.0)),
    ("STS-B", "dev"): (1500, None, ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    ("WNLI", "train"): (
        635,
        {0: 323, 1: 312},
        ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.", "The carrot had a hole.", 1),
    ),
    ("WNLI", "dev"): (
        71,
        {0: 40, 1: 31},
        ("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0),
    ),
    ("QNLI", "dev"): (
        5463,
        {1: 2761, 0: 2702},
        (
            "What came into force after the new constitution was herald?",
            "As of that day, the new constitution heralding the Second Republic came into force.",
            0,
        ),
    ),
    ("AX", "test"): (1104, {None: 1104}, ("The cat sat on the mat.", "The cat did not sit on the mat.", None)),
    ("QNLI", "test"): (5463, {None: 5463}, ("What organization is devoted to Jihad against Israel?", None, None)),
    ("CoLA", "test"): (1063, {None: 1063}, ("Bill whistled past the house.", None, None)),
}


@pytest.mark.parametrize(("task", "split"), list(REAL))
def test_real_glue_files(glue, task, split):
    rows, counts, (text_a, text_b, label) = REAL[(task, split)]
    examples = load_examples(glue, task, split)
    assert len(examples) == rows
    first = examples[0]
    assert first.text_a == text_a and first.label == label
    if text_b is not None:
        assert first.text_b == text_b
    if counts is not None:
        assert Counter(e.label for e in examples) == counts
    assert len({e.guid for e in examples}) == rows and first.guid.startswith(f"{split}-")


def test_stsb_scores_are_floats_in_range(glue):
    scores = np.array([e.label for e in load_examples(glue, "stsb", "dev")])
    assert scores.dtype == np.float64 and scores.min() == 0.0 and scores.max() == 5.0
    assert all(e.label is None for e in load_examples(glue, "stsb", "test"))


@pytest.mark.parametrize(("task", "split"), [("MRPC", "dev"), ("STS-B", "train"), ("QNLI", "dev"), ("SST-2", "test")])
def test_examples_agree_with_a_plain_split_reader(glue, task, split):
    """Independent reference: split lines on tabs by hand and pick the official columns."""
    t = TASKS[task]
    lines = (glue / task / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    a, b = t.text_fields(split)
    examples = load_examples(glue, task, split)
    assert len(examples) == len(lines)
    for example, line in zip(examples, lines):
        fields = line.split("\t")
        assert example.text_a == fields[a]
        assert example.text_b == (None if b is None else fields[b])


def test_mrpc_header_bom_is_dropped(glue):
    header, rows = read_tsv(glue / "MRPC" / "train.tsv")
    assert header == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"] and len(rows) == 3668


def test_read_tsv_detects_headers(glue):
    assert read_tsv(glue / "CoLA" / "dev.tsv")[0] is None
    assert read_tsv(glue / "CoLA" / "test.tsv")[0] == ["index", "sentence"]
    assert read_tsv(glue / "SST-2" / "dev.tsv")[0] == ["sentence", "label"]
    assert read_tsv(glue / "diagnostic" / "diagnostic.tsv")[0] == ["index", "sentence1", "sentence2"]


# ------------------------------------------------------------------------- MNLI and QQP format samples

SEEDS = ["16-100", "16-13", "16-21", "16-42", "16-87"]


@pytest.mark.parametrize("seed", SEEDS)
def test_mnli_and_qqp_samples(samples, seed):
    for split in ("train", "dev_matched"):
        examples = load_examples(samples / "MNLI" / seed, "mnli", split)
        assert Counter(e.label for e in examples) == {0: 16, 1: 16, 2: 16}
        assert all(e.text_a and e.text_b for e in examples)
    for split in ("train", "dev"):
        examples = load_examples(samples / "QQP" / seed, "qqp", split)
        assert Counter(e.label for e in examples) == {0: 16, 1: 16}


def test_mnli_sample_first_row_by_file_path(samples):
    path = samples / "MNLI" / "16-13" / "dev_matched.tsv"
    header, rows = read_tsv(path)
    assert len(header) == 12 and header[-2:] == ["label1", "gold_label"]
    (example, *_) = load_examples(path, "MNLI", "dev_matched")
    assert example.guid == "dev_matched-208116"
    assert example.text_b == "Did you open the poison cupboard and study the bottle?"
    assert TASKS["MNLI"].labels[example.label] == rows[0][-1] == "entailment"


def test_qqp_sample_first_row(samples):
    (example, *_) = load_examples(samples / "QQP" / "16-13", "QQP", "dev")
    assert example == Example(
        "dev-333602", "What, according to you, is the best Disney film?", "What is the best Disney movie?", 1
    )


def test_missing_split_names_where_it_looked(samples):
    with pytest.raises(TensorslimError, match="dev_mismatched.tsv"):
        load_examples(samples / "MNLI" / "16-13", "MNLI", "dev_mismatched")


# -------------------------------------------------------------------------------------- bad input


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(TensorslimError, match="does not exist"):
        load_examples(tmp_path / "nowhere", "RTE", "dev")
    with pytest.raises(TensorslimError, match=r"RTE/dev\.tsv"):
        load_examples(tmp_path, "RTE", "dev")
    with pytest.raises(TensorslimError, match="does not exist"):
        read_tsv(tmp_path / "x.tsv")
    with pytest.raises(TensorslimError, match="is a directory"):
        read_tsv(tmp_path)


def test_row_with_too_few_fields_names_the_line(tmp_path):
    write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta b\tentailment\n")
    with pytest.raises(TensorslimError, match=r"dev\.tsv:3: 3 tab-separated fields where the header has 4"):
        load_examples(tmp_path, "RTE", "dev")


def test_header_of_another_task(tmp_path):
    write(tmp_path / "QNLI" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(TensorslimError, match=r"not a QNLI dev header: no column 'question'") as err:
        load_examples(tmp_path, "QNLI", "dev")
    assert "index\\tquestion\\tsentence\\tlabel" in str(err.value)


def test_label_not_in_task(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tneutral\n")
    with pytest.raises(TensorslimError, match=r"train\.tsv:3: label 'neutral' is not a RTE label"):
        load_examples(tmp_path, "RTE", "train")
    stsb_header = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
    row = ["0"] * 7 + ["a", "b", "high"]
    write(tmp_path / "STS-B" / "dev.tsv", "\t".join(stsb_header) + "\n" + "\t".join(row) + "\n")
    with pytest.raises(TensorslimError, match="label 'high' is not a number"):
        load_examples(tmp_path, "STS-B", "dev")


def test_cola_row_too_short(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", "a sentence\t1\n")
    with pytest.raises(TensorslimError, match="CoLA train row has 4"):
        load_examples(tmp_path, "CoLA", "train")


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(TensorslimError, match="is empty"):
        read_tsv(write(tmp_path / "empty.tsv", "\n\n"))
    write(tmp_path / "WNLI" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(TensorslimError, match="has a header but no rows"):
        load_examples(tmp_path, "WNLI", "dev")


def test_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "bad.tsv", b"index\tsentence\n0\tcaf\xe9\n")
    with pytest.raises(TensorslimError, match=r"bad\.tsv:2: not UTF-8 \(byte 0xe9") as err:
        read_tsv(path)
    assert "iconv" in str(err.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.text(alphabet="ab\t\n\r\"'\x00\\ é", max_size=200).map(str.encode))
def test_random_bytes_give_rows_or_tensorslim_error(tmp_path, data):
    path = tmp_path / "random.tsv"
    path.write_bytes(data)
    try:
        header, rows = read_tsv(path)
    except TensorslimError:
        return
    records = ([header] if header is not None else []) + rows
    assert records and all(isinstance(f, str) for row in records for f in row)
    assert len({len(row) for row in records}) == 1


def test_oversized_field_names_the_line(tmp_path):
    path = write(tmp_path / "big.tsv", "index\tsentence\n0\tok\n1\t" + "a" * 200_000 + "\n")
    with pytest.raises(TensorslimError, match=r"big\.tsv:3: unreadable TSV"):
        read_tsv(path)


def test_line_numbers_count_blank_lines(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\n\ngood\t1\n\nbad\t2\n")
    with pytest.raises(TensorslimError, match=r"dev\.tsv:5: label '2'"):
        load_examples(tmp_path, "SST-2", "dev")


# ------------------------------------------------------------------------------------- TSV writing


def test_write_read_round_trip(tmp_path, glue):
    header, rows = read_tsv(glue / "MRPC" / "dev.tsv")
    write_tsv(tmp_path / "MRPC" / "train_aug.tsv", header, rows)
    assert read_tsv(tmp_path / "MRPC" / "train_aug.tsv") == (header, rows)
    assert [e.label for e in load_examples(tmp_path, "MRPC", "train_aug")] == [
        e.label for e in load_examples(glue, "MRPC", "dev")
    ]
    cola = [["gj04", "1", "", 'He said "hi" \\ there'], ["gj04", "0", "*", "trailing space "]]
    write_tsv(tmp_path / "CoLA" / "train_aug.tsv", None, cola)
    assert read_tsv(tmp_path / "CoLA" / "train_aug.tsv") == (None, cola)
    assert (tmp_path / "CoLA" / "train_aug.tsv").read_bytes().count(b"\n") == 2
    assert [e.text_a for e in load_examples(tmp_path, "cola", "train_aug")] == [cola[0][3], cola[1][3]]
    assert sorted(os.listdir(tmp_path / "CoLA")) == ["train_aug.tsv"]  # no temporary file left behind


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 4).flatmap(
        lambda width: st.lists(
            st.lists(
                st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=["Cs"]), min_size=1),
                min_size=width,
                max_size=width,
            ),
            min_size=1,
            max_size=5,
        )
    )
)
def test_round_trip_property(tmp_path, rows):
    header = [f"c{i}" for i in range(len(rows[0]))]
    write_tsv(tmp_path / "p.tsv", header, rows)
    assert read_tsv(tmp_path / "p.tsv", has_header=True) == (header, rows)


def test_write_tsv_rejects_unreadable_rows(tmp_path):
    with pytest.raises(TensorslimError, match="row 1, column 1 contains a tab"):
        write_tsv(tmp_path / "x.tsv", ["a", "b"], [["1", "2"], ["3", "4\t5"]])
    with pytest.raises(TensorslimError, match="row 0 has 1 fields, expected 2"):
        write_tsv(tmp_path / "x.tsv", ["a", "b"], [["1"]])
    with pytest.raises(TensorslimError, match="blank line"):
        write_tsv(tmp_path / "x.tsv", None, [[""]])
    assert not (tmp_path / "x.tsv").exists()
