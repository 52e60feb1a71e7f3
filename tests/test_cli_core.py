"""`tensorslim decompose` and `tensorslim report` end to end, and their errors."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, T5Config, T5Model

from tensorslim.cli import main
from tensorslim.compress.loading import load_model


def test_decompose_writes_a_loadable_student(tiny_bert_dir, tmp_path):
    out = tmp_path / "student"
    assert (
        main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "8", "--layer-rank", "6"]) == 0
    )
    record = json.loads((out / "decomposition.json").read_text())
    assert (record["method"], record["rank"], record["layer_rank"], record["ops"]) == ("tucker", 8, 6, "all")
    assert record["parameters"]["teacher"]["encoder"] > record["parameters"]["student"]["encoder"]
    assert record["decomposed_weights"]["student"] == 2 * 32 * 8 + 24 * 6 + 6 * 64
    assert set(record["relative_error_per_slot"]) == {
        "q",
        "k",
        "v",
        "o",
        *(f"ffn_{s}.{j}" for s in ("in", "out") for j in range(4)),
    }
    assert record["seconds"]["total"] > 0 and record["hooi"]["sweep_dtype"] in ("float32", "bfloat16")
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "BertForMaskedLM"  # the teacher's own class, with factored projections
    assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "FactoredProjection"
    assert model.config.quantization_config.method == "tucker"
    assert (out / "tokenizer.json").is_file()


def test_decompose_precision_reaches_hooi(tiny_bert_dir, tmp_path):
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        assert (
            main(
                [
                    "decompose",
                    "--teacher",
                    str(tiny_bert_dir),
                    "--out",
                    str(out),
                    "--rank",
                    "8",
                    "--layer-rank",
                    "6",
                    "--precision",
                    precision,
                ]
            )
            == 0
        )
        assert json.loads((out / "decomposition.json").read_text())["hooi"]["sweep_dtype"] == precision


def test_decompose_from_budget(tiny_bert_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--budget", "1.5k"]) == 0
    record = json.loads((out / "decomposition.json").read_text())
    # tucker's budget search tries banks of n, 3n/4, n/2 and n/4 of the 24 slices (docs/decomposition.md s. 6)
    assert record["layer_rank"] in (24, 18, 12, 6) and record["decomposed_weights"]["student"] <= 1500


def test_report_prints_and_writes_json(tiny_bert_dir, tmp_path):
    out = tmp_path / "s"
    main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "8", "--layer-rank", "6"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorslim.cli",
            "report",
            "--model",
            str(out),
            "--teacher",
            str(tiny_bert_dir),
            "--seconds",
            "0.2",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sequences / s" in proc.stdout and "encoder compression" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    t, m = report["teacher"], report["model"]
    assert report["ratios"]["encoder_parameters"] == pytest.approx(
        t["parameters"]["encoder"] / m["parameters"]["encoder"]
    )
    # Dense BERT FLOPs by hand: 2 layers x (4 D^2 + 2 D I + 2 T D) multiply-adds, doubled.
    assert t["flops_per_token"] == 2 * 2 * (4 * 32**2 + 2 * 32 * 128 + 2 * 16 * 32)
    assert m["throughput"]["sequences_per_second"] > 0


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "does not exist"),
        ("noconfig", "has no config.json"),
        ("t5", "model type 't5' is not supported"),
        ("corrupt", "cannot load the weights"),
    ],
)
def test_bad_teacher_directories(tmp_path, tiny_bert_dir, case, message, caplog):
    teacher = tmp_path / "teacher"
    if case == "noconfig":
        teacher.mkdir()
    elif case == "t5":
        T5Model(T5Config(num_layers=1, d_model=16, d_kv=8, d_ff=32, num_heads=2, vocab_size=50)).save_pretrained(
            teacher
        )
    elif case == "corrupt":
        import shutil

        shutil.copytree(tiny_bert_dir, teacher)
        weights = teacher / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(["decompose", "--teacher", str(teacher), "--out", str(out)]) == 2
    assert message in caplog.text and "fix:" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--rank", "0"], "rank 0 is out of range"),
        (["--rank", "33"], "rank 33 is out of range"),
        (["--layer-rank", "25"], "layer rank 25 is out of range"),
        (["--budget", "10"], "no tucker rank setting fits"),
    ],
)
def test_bad_ranks(tiny_bert_dir, tmp_path, flags, message, caplog):
    out = tmp_path / "out"
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), *flags]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_unreadable_budget_is_a_usage_error(tiny_bert_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(tmp_path / "o"), "--budget", "lots"])
    assert exit_info.value.code == 2 and "cannot read the budget 'lots'" in capsys.readouterr().err


def test_refuses_foreign_output_dir(tiny_bert_dir, tmp_path, caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "4"]) == 2
    assert "--overwrite" in caplog.text and (out / "notes.txt").read_text() == "precious"
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "4", "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "decomposition.json").exists()


def test_every_command_has_help():
    from tensorslim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert len(p.description or "") > 20, name
        assert "--help" in text


def test_student_weights_are_finite(tiny_bert_dir, tmp_path):
    out = tmp_path / "s"
    main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--method", "lowrank", "--rank", "3"])
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("damage,message", [("rank", "cannot load the weights"), ("drop", "does not hold the weights")])
def test_student_whose_config_and_weights_disagree(tiny_bert_dir, tmp_path, damage, message, caplog):
    from safetensors.torch import load_file, save_file

    student = tmp_path / "s"
    main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(student), "--rank", "8", "--layer-rank", "6"])
    if damage == "rank":
        config = json.loads((student / "config.json").read_text())
        config["quantization_config"]["groups"]["32x32"]["ranks"]["sides"] = [10, 10]
        (student / "config.json").write_text(json.dumps(config))
    else:
        weights = load_file(student / "model.safetensors")
        weights.pop("bert.tensorslim_factors.groups.32x32.C")
        save_file(weights, student / "model.safetensors", metadata={"format": "pt"})
    assert main(["report", "--model", str(student), "--seconds", "0.1", "--batch-size", "2", "--seq-len", "8"]) == 2
    assert message in caplog.text and "fix:" in caplog.text


def test_decomposition_is_deterministic(tiny_bert_dir, tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "decompose",
                    "--teacher",
                    str(tiny_bert_dir),
                    "--out",
                    str(tmp_path / name),
                    "--rank",
                    "6",
                    "--layer-rank",
                    "5",
                ]
            )
            == 0
        )
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_decompose_by_compression_removes_that_share_of_the_matrix_weights(tiny_bert_dir, tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "decompose",
                "--teacher",
                str(tiny_bert_dir),
                "--out",
                str(out),
                "--method",
                "lowrank",
                "--compression",
                "20%",
            ]
        )
        == 0
    )
    w = json.loads((out / "decomposition.json").read_text())["decomposed_weights"]
    assert w["student"] <= 0.8 * w["teacher"]
    # the largest rank that fits: one more would keep more than 80% (d x (2 D + d) per slice, 24 slices of 32 x 32)
    d = json.loads((out / "decomposition.json").read_text())["rank"]
    assert 24 * (d + 1) * (64 + d + 1) > 0.8 * w["teacher"]


@pytest.mark.parametrize("value", ["0%", "100%", "1.5"])
def test_compression_outside_zero_and_one_is_refused(tiny_bert_dir, tmp_path, value, caplog):
    out = tmp_path / "s"
    assert main(["decompose", "--teacher", str(tiny_bert_dir), "--out", str(out), "--compression", value]) == 2
    assert "is not between 0 and 1" in caplog.text and not out.exists()


def test_decompose_gives_a_masked_lm_teacher_a_classifier_head_of_num_labels(tiny_bert_dir, tmp_path):
    """--head with --num-labels on a teacher saved without that head (it used to raise a TypeError)."""
    out = tmp_path / "s"
    args = ["--teacher", str(tiny_bert_dir), "--out", str(out), "--rank", "8"]
    assert main(["decompose", *args, "--head", "sequence_classification", "--num-labels", "3"]) == 0
    model = load_model(out)
    assert type(model).__name__.endswith("ForSequenceClassification") and model.config.num_labels == 3
    assert model.classifier.out_features == 3
