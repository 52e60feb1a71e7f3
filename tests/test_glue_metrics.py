"""tensorslim.data.glue's metrics against hand-computed values and independent formulas, GLUE-server
prediction files, and label-order checks (reading and writing the task files: tests/test_glue.py)."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest

from tensorslim.data.glue import (
    TASKS,
    check_label_mapping,
    compute_metrics,
    label_permutation,
    load_examples,
    read_tsv,
    write_predictions,
)
from tensorslim.errors import TensorslimError


@pytest.fixture(scope="module")
def glue(shared_data):
    return shared_data / "glue"


# ------------------------------------------------------------------------------------------ metrics


def test_mcc_by_hand():
    # references 1 1 1 1 0 0 0 0, predictions 1 1 1 0 0 0 1 1: TP=3 FN=1 TN=2 FP=2
    ref = [1, 1, 1, 1, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 0, 0, 1, 1]
    mcc = (3 * 2 - 2 * 1) / math.sqrt((3 + 2) * (3 + 1) * (2 + 2) * (2 + 1))  # = 4 / sqrt(240)
    assert compute_metrics("cola", pred, ref) == pytest.approx({"mcc": mcc, "score": mcc})
    assert compute_metrics("cola", [1] * 8, ref)["mcc"] == 0.0  # constant predictions: MCC defined as 0


def test_f1_accuracy_by_hand():
    ref = [1, 1, 1, 1, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 0, 0, 1, 1]  # precision 3/5, recall 3/4, F1 = 2/3; accuracy 5/8
    expected = {"accuracy": 5 / 8, "f1": 2 / 3, "f1_accuracy": (5 / 8 + 2 / 3) / 2}
    for task in ("MRPC", "QQP"):
        assert compute_metrics(task, pred, ref) == pytest.approx({**expected, "score": expected["f1_accuracy"]})


def test_accuracy_and_logits():
    logits = np.array([[2.0, 0.1, 0.3], [0.0, 3.0, 1.0], [0.0, 0.5, 0.7], [1.0, 0.0, 0.0]])  # argmax 0 1 2 0
    assert compute_metrics("mnli", logits, [0, 1, 1, 0]) == {"accuracy": 0.75, "score": 0.75}
    assert compute_metrics("sst-2", np.array([1, 0]), np.array([1, 1])) == {"accuracy": 0.5, "score": 0.5}


def test_pearson_spearman_by_hand():
    pred, ref = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # Pearson: deviations (-1.5,-.5,.5,1.5) both sides -> cov 1.5*1.5+.5*(-.5)... = 2.25-.25-.25+2.25 = 4; var 5 -> 0.8
    # Spearman: ranks equal the values, so also 0.8
    result = compute_metrics("STS-B", pred, ref)
    assert result == pytest.approx({"pearson": 0.8, "spearman": 0.8, "pearson_spearman": 0.8, "score": 0.8})
    result = compute_metrics("STS-B", [1.0, 2.0, 3.0, 100.0], [1.0, 3.0, 2.0, 4.0])
    assert result["spearman"] == pytest.approx(0.8) and result["pearson"] != pytest.approx(0.8)


def test_metrics_against_independent_formulas():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.8, ref, 1 - ref)
    tp, tn = np.sum((pred == 1) & (ref == 1)), np.sum((pred == 0) & (ref == 0))
    fp, fn = np.sum((pred == 1) & (ref == 0)), np.sum((pred == 0) & (ref == 1))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics("CoLA", pred, ref)["mcc"] == pytest.approx(mcc)
    assert compute_metrics("QQP", pred, ref)["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    three = rng.integers(0, 3, 300)
    assert compute_metrics("AX", three, three)["mcc"] == pytest.approx(1.0)
    scores = rng.uniform(0, 5, 200)
    noisy = scores + rng.normal(0, 1, 200)
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties in continuous data)
    result = compute_metrics("STS-B", noisy, scores)
    assert result["pearson"] == pytest.approx(np.corrcoef(noisy, scores)[0, 1])
    assert result["spearman"] == pytest.approx(np.corrcoef(ranks(noisy), ranks(scores))[0, 1])


def test_metric_input_errors(caplog):
    with pytest.raises(TensorslimError, match="2 predictions for 3 references"):
        compute_metrics("RTE", [0, 1], [0, 1, 1])
    with pytest.raises(TensorslimError, match="test splits have no labels"):
        compute_metrics("RTE", [0, 1], [None, None])
    with pytest.raises(TensorslimError, match="hold 3, not a MNLI label id"):
        compute_metrics("MNLI", [0, 3], [0, 1])
    with pytest.raises(TensorslimError, match=r"shape \(2, 5\)"):
        compute_metrics("MNLI", np.zeros((2, 5)), [0, 1])
    with pytest.raises(TensorslimError, match="NaN"):
        compute_metrics("STS-B", [1.0, float("nan")], [1.0, 2.0])
    with caplog.at_level(logging.WARNING):
        assert compute_metrics("STS-B", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0
    assert "undefined" in caplog.text


# -------------------------------------------------------------------------------------- predictions


def test_prediction_files(tmp_path):
    path = write_predictions("rte", [0, 1, 1], tmp_path)
    assert path == tmp_path / "RTE.tsv"
    assert path.read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n"
    assert (
        write_predictions("CoLA", np.array([[0.2, 0.9], [3.0, 1.0]]), tmp_path).read_text()
        == "index\tprediction\n0\t1\n1\t0\n"
    )
    stsb = write_predictions("sts-b", [-0.4, 2.34567, 5.2], tmp_path)
    assert stsb.read_text() == "index\tprediction\n0\t0.000\n1\t2.346\n2\t5.000\n"
    m = write_predictions("MNLI", [0, 1, 2], tmp_path, split="test_matched")
    mm = write_predictions("MNLI", [2], tmp_path, split="test_mismatched")
    assert (m.name, mm.name) == ("MNLI-m.tsv", "MNLI-mm.tsv")
    assert read_tsv(m) == (["index", "prediction"], [["0", "contradiction"], ["1", "entailment"], ["2", "neutral"]])
    assert write_predictions("AX", [1], tmp_path).read_text() == "index\tprediction\n0\tentailment\n"
    names = {write_predictions(t, [0], tmp_path).name for t in ("SST-2", "MRPC", "QQP", "QNLI", "WNLI")}
    assert names == {"SST-2.tsv", "MRPC.tsv", "QQP.tsv", "QNLI.tsv", "WNLI.tsv"}
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["RTE.tsv", "CoLA.tsv", "STS-B.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv", *names]
    )


def test_prediction_file_for_the_real_test_set(glue, tmp_path, caplog):
    examples = load_examples(glue, "WNLI", "test")
    with caplog.at_level(logging.WARNING):
        path = write_predictions("WNLI", [i % 2 for i in range(len(examples))], tmp_path)
    assert "expects" not in caplog.text
    header, rows = read_tsv(path)
    assert [r[0] for r in rows] == [e.guid.removeprefix("test-") for e in examples]
    with caplog.at_level(logging.WARNING):
        write_predictions("WNLI", [0] * 10, tmp_path)
    assert "the GLUE server expects 146" in caplog.text


def test_prediction_split_errors(tmp_path):
    with pytest.raises(TensorslimError, match="test_matched, test_mismatched"):
        write_predictions("MNLI", [0], tmp_path)
    with pytest.raises(TensorslimError, match="not a SST-2 label id"):
        write_predictions("SST-2", [2], tmp_path)


# ------------------------------------------------------------------------------------ label mapping


def test_label_mapping_counts():
    from transformers import BertConfig

    check_label_mapping("sst2", BertConfig(num_labels=2))
    check_label_mapping("STS-B", BertConfig(num_labels=1))
    check_label_mapping("MNLI", BertConfig(num_labels=3))  # LABEL_0.. carry no order: accepted
    with pytest.raises(TensorslimError, match="num_labels=2 but MNLI needs num_labels=3") as err:
        check_label_mapping("MNLI", BertConfig(num_labels=2))
    assert "fix:" in str(err.value)
    with pytest.raises(TensorslimError, match="regression head"):
        check_label_mapping("STS-B", BertConfig(num_labels=2))


def test_label_mapping_order():
    from transformers import BertConfig

    # A typical MNLI checkpoint: ENTAILMENT, NEUTRAL, CONTRADICTION.
    config = BertConfig(id2label={0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"})
    assert label_permutation("MNLI", config) == [2, 0, 1]
    with pytest.raises(TensorslimError, match=r"logits\[\.\.\., \[2, 0, 1\]\]"):
        check_label_mapping("MNLI", config)
    model_logits = np.array([[5.0, 0.0, 1.0], [0.0, 0.0, 4.0]])  # the model says: entailment, contradiction
    task_logits = model_logits[:, label_permutation("MNLI", config)]
    assert [TASKS["MNLI"].labels[i] for i in task_logits.argmax(1)] == ["entailment", "contradiction"]
    check_label_mapping("mnli", BertConfig(id2label={0: "contradiction", 1: "entailment", 2: "neutral"}))
    assert label_permutation("SST-2", {"id2label": {"0": "POSITIVE", "1": "NEGATIVE"}}) == [1, 0]
    check_label_mapping("SST-2", {"id2label": {"0": "NEGATIVE", "1": "POSITIVE"}})
    check_label_mapping("QNLI", {"label2id": {"entailment": 0, "not-entailment": 1}})
    with pytest.raises(TensorslimError, match="are not the RTE labels"):
        check_label_mapping("RTE", BertConfig(id2label={0: "positive", 1: "negative"}))
