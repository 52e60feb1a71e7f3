"""`tensorslim evaluate` against an independent computation: our own TSV parsing, tokenization and
argmax; MNLI's two dev sets scored separately; GLUE-server prediction files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_tiny_bert
from glue_subset import make_glue_subset
from tensorslim.cli import main
from tensorslim.train import evaluate


@pytest.fixture(scope="module")
def glue(tmp_path_factory, shared_data):
    return make_glue_subset(shared_data, tmp_path_factory.mktemp("glue"))


def rows(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def manual_logits(model_dir, texts_a, texts_b=None, max_length=64):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    outs = []
    for i, a in enumerate(texts_a):  # one at a time: no padding involved at all
        enc = tokenizer(
            a, None if texts_b is None else texts_b[i], truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.no_grad():
            outs.append(model(**enc).logits[0].numpy())
    return np.stack(outs)


def test_sst2_accuracy_matches_manual_computation_and_predictions(tmp_path, tokenizer, glue, capsys):
    model = make_tiny_bert(tmp_path / "m", tokenizer, head="cls", seed=7)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--task",
                "SST-2",
                "--glue-dir",
                str(glue),
                "--out",
                str(out),
                "--predict",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    results = json.loads((out / "eval_results.json").read_text())
    dev = rows(glue / "SST-2" / "dev.tsv")
    logits = manual_logits(model, [r["sentence"] for r in dev])
    accuracy = float(np.mean(logits.argmax(1) == np.array([int(r["label"]) for r in dev])))
    assert results["splits"]["dev"]["accuracy"] == pytest.approx(accuracy)
    assert results["score"] == pytest.approx(accuracy)
    assert "accuracy" in capsys.readouterr().out
    test = rows(glue / "SST-2" / "test.tsv")
    predicted = rows(out / "SST-2.tsv")
    assert [r["index"] for r in predicted] == [str(i) for i in range(len(test))]
    expected = manual_logits(model, [r["sentence"] for r in test]).argmax(1)
    assert [r["prediction"] for r in predicted] == [str(v) for v in expected]


def test_mnli_scores_both_dev_sets_each_with_its_own_file(tmp_path, tokenizer, glue):
    model = make_tiny_bert(tmp_path / "m", tokenizer, head="cls", num_labels=3, seed=2)
    results = evaluate(model, "MNLI", glue)
    assert set(results["splits"]) == {"dev_matched", "dev_mismatched"}
    labels = ["contradiction", "entailment", "neutral"]
    for split in ("dev_matched", "dev_mismatched"):
        dev = rows(glue / "MNLI" / f"{split}.tsv")
        logits = manual_logits(model, [r["sentence1"] for r in dev], [r["sentence2"] for r in dev], 128)
        gold = np.array([labels.index(r["gold_label"]) for r in dev])
        assert results["splits"][split]["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == gold)))
    assert (model / "eval_results.json").is_file()
    assert results["score"] == pytest.approx(np.mean([m["score"] for m in results["splits"].values()]))


def test_stsb_regression_correlations(tmp_path, tokenizer, glue):
    model = make_tiny_bert(tmp_path / "m", tokenizer, head="cls", num_labels=1, seed=4)
    results = evaluate(model, "STS-B", glue, tmp_path / "out")
    dev = rows(glue / "STS-B" / "dev.tsv")
    scores = manual_logits(model, [r["sentence1"] for r in dev], [r["sentence2"] for r in dev], 128)[:, 0]
    expected = pearsonr(scores, [float(r["score"]) for r in dev])[0]
    assert results["splits"]["dev"]["pearson"] == pytest.approx(expected, rel=1e-4)


def test_model_without_head_or_wrong_labels_is_refused(tmp_path, tiny_bert_dir, tokenizer, glue, caplog):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_bert_dir),
                "--task",
                "SST-2",
                "--glue-dir",
                str(glue),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "has no classification head" in caplog.text
    model = make_tiny_bert(tmp_path / "m", tokenizer, head="cls", num_labels=3)
    assert main(["evaluate", "--model", str(model), "--task", "SST-2", "--glue-dir", str(glue)]) == 2


def test_constant_baseline_by_hand(tmp_path, tokenizer, glue):
    """The majority training label (SST-2, MNLI) and the mean training score (STS-B), each scored
    on the dev labels with the task's metric, computed here from the TSV files directly."""
    from tensorslim.train.evaluate import constant_baseline, constant_prediction, margin_kept

    train = [int(r["label"]) for r in rows(glue / "SST-2" / "train.tsv")]
    majority = int(np.bincount(train).argmax())
    dev = np.array([int(r["label"]) for r in rows(glue / "SST-2" / "dev.tsv")])
    value, text, source = constant_prediction("SST-2", glue)
    assert (value, source) == (majority, "train") and "majority train label" in text
    base = constant_baseline("SST-2", glue, {"dev": dev})
    assert base["score"] == pytest.approx(float(np.mean(dev == majority))) and base["source"] == "train"

    labels = ["contradiction", "entailment", "neutral"]
    gold = [labels.index(r["gold_label"]) for r in rows(glue / "MNLI" / "train.tsv")]
    assert constant_prediction("MNLI", glue)[0] == int(np.bincount(gold, minlength=3).argmax())

    mean = float(np.mean([float(r["score"]) for r in rows(glue / "STS-B" / "train.tsv")]))
    value, text, _ = constant_prediction("STS-B", glue)
    assert value == pytest.approx(mean) and "mean train score" in text
    stsb_dev = np.array([float(r["score"]) for r in rows(glue / "STS-B" / "dev.tsv")])
    assert constant_baseline("STS-B", glue, {"dev": stsb_dev})["score"] == 0.0  # a constant has no correlation

    only_dev = tmp_path / "only_dev" / "SST-2"
    only_dev.mkdir(parents=True)
    (only_dev / "dev.tsv").write_text((glue / "SST-2" / "dev.tsv").read_text())
    assert constant_prediction("SST-2", only_dev.parent)[2] == "dev"

    # the example: majority 0.53, teacher 0.57, student 0.545 keeps 3/8 of the teacher's margin
    assert margin_kept(0.545, 0.57, 0.53) == pytest.approx(0.375)
    assert margin_kept(0.6, 0.5, 0.53) is None and margin_kept(None, 0.57, 0.53) is None


def test_evaluate_json_holds_the_baseline(tmp_path, tokenizer, glue):
    model = make_tiny_bert(tmp_path / "m", tokenizer, head="cls", seed=7)
    results = evaluate(model, "SST-2", glue, tmp_path / "out", max_eval_samples=10)
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    dev = np.array([int(r["label"]) for r in rows(glue / "SST-2" / "dev.tsv")][:10])
    majority = int(np.bincount([int(r["label"]) for r in rows(glue / "SST-2" / "train.tsv")]).argmax())
    assert saved["baseline"] == results["baseline"]
    assert saved["baseline"]["splits"]["dev"]["accuracy"] == pytest.approx(float(np.mean(dev == majority)))


def test_margin_kept_against_the_teachers_results(tmp_path, tokenizer, glue, capsys, caplog):
    teacher = make_tiny_bert(tmp_path / "t", tokenizer, head="cls", seed=7)
    student = make_tiny_bert(tmp_path / "s", tokenizer, head="cls", seed=3)
    t = evaluate(teacher, "SST-2", glue, max_eval_samples=12)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(student),
                "--task",
                "SST-2",
                "--glue-dir",
                str(glue),
                "--max-eval-samples",
                "12",
                "--teacher",
                str(teacher),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "o" / "eval_results.json").read_text())
    assert s["examples"] == {"dev": 12} and s["teacher"] == {"model": str(teacher), "score": t["score"]}
    base = s["baseline"]["score"]
    expected = (s["score"] - base) / (t["score"] - base) if t["score"] > base else None
    assert s["margin_kept"] == (pytest.approx(expected) if expected is not None else None)
    assert "margin over the baseline kept" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(student),
                "--task",
                "SST-2",
                "--glue-dir",
                str(glue),
                "--max-eval-samples",
                "10",
                "--teacher",
                str(teacher),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "same --max-eval-samples" in caplog.text and not (tmp_path / "o2" / "eval_results.json").exists()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(student),
                "--task",
                "STS-B",
                "--glue-dir",
                str(glue),
                "--teacher",
                str(teacher),
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert "holds 'SST-2' results, not a STS-B score" in caplog.text
