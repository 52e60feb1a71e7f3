"""What you ship (tensorslim.report.serving): counts and bytes against the files and an independent
count, every engine checked against eager inside the measurement, an engine that fails or differs
becomes an "unavailable" cell, the table renders and the record validates. No timed assertions."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tensorslim.compress.api import decompose_to_dir
from tensorslim.compress.counts import count_parameters, matrix_weights
from tensorslim.compress.export import TOLERANCE, export_to_dir
from tensorslim.compress.loading import load_model
from tensorslim.errors import TensorslimError
from tensorslim.report import serving as serving_module
from tensorslim.report.document import to_markdown
from tensorslim.report.render import plot_names
from tensorslim.report.run import parse_run, parse_serving
from tensorslim.report.sections import build_document
from tensorslim.report.serving import ServingSettings, measure_serving
from tensorslim.report.serving_table import format_serving, serving_rows
from tensorslim.report.summary import check_report_settings, describe, format_report, model_report
from tiny_models import TINY, tiny_model, tiny_tokenizer

#: tiny and quick: aot_eager captures the graph without inductor's C++ build
SETTINGS = ServingSettings(
    seq_len=16, throughput_batch=4, seconds=0.02, compile_backend="aot_eager", memory=False, threads=1
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT classifier, its tucker student and the teacher in int8."""
    root = tmp_path_factory.mktemp("serving")
    teacher = root / "teacher"
    tiny_model("bert", "sequence_classification").save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    decompose_to_dir(teacher, root / "student", "tucker", rank=8, layer_rank=2)
    export_to_dir(teacher, root / "int8", "int8")
    return {"teacher": teacher, "student": root / "student", "int8": root / "int8"}


@pytest.fixture(scope="module")
def record(dirs) -> dict:
    return measure_serving(dirs, SETTINGS)


def test_counts_and_bytes_are_those_of_the_files_and_of_counts(dirs, record):
    bert = TINY["bert"]
    hidden, ffn, layers = bert["hidden_size"], bert["intermediate_size"], bert["num_hidden_layers"]
    dense_matrices = layers * (4 * hidden * hidden + 2 * hidden * ffn)  # q, k, v, o and the FFN's two
    for name, path in dirs.items():
        facts = record["models"][name]
        files = {p.name: p.stat().st_size for p in path.iterdir() if p.name in ("model.safetensors", "model_int8.pt")}
        assert facts["weight_files"] == files and facts["disk_bytes"] == sum(files.values()) > 0
    for name in ("teacher", "student"):
        model = load_model(dirs[name])
        assert record["models"][name]["parameters"] == count_parameters(model)["total"]
        assert record["models"][name]["matrix_weights"] == matrix_weights(model)
    assert record["models"]["teacher"]["matrix_weights"] == dense_matrices
    assert record["models"]["student"]["matrix_weights"] < dense_matrices
    # int8 keeps every weight (one byte each instead of four): the same counts as the float teacher
    int8, teacher = record["models"]["int8"], record["models"]["teacher"]
    assert int8["int8"] and not teacher["int8"]
    assert (int8["parameters"], int8["matrix_weights"]) == (teacher["parameters"], teacher["matrix_weights"])


def test_every_engine_matches_eager_and_an_int8_graph_is_unavailable_not_a_crash(record):
    for name, model in record["models"].items():
        for engine in SETTINGS.engines:
            cell = model["engines"][engine]
            if name == "int8" and engine == "onnxruntime":
                assert not cell["available"] and "torch.onnx.export cannot export" in cell["reason"]
                continue
            assert cell["available"], (name, engine, cell["reason"])
            assert 0 <= cell["max_abs_diff"] <= TOLERANCE
            assert cell["latency_ms"] > 0 and cell["throughput_seq_per_s"] > 0
        assert 0 <= model["engines"]["onnxruntime"].get("export_check", 0) <= TOLERANCE
    ratio = record["models"]["student"]["engines"]["onnxruntime"]["latency_speedup"]
    assert ratio["median"] is None or ratio["median"] > 0
    assert "latency_speedup" not in record["models"]["teacher"]["engines"]["eager"]  # the baseline
    assert set(record["timing"]) == {"latency", "throughput"}


def test_an_engine_that_fails_or_differs_is_reported_unavailable(dirs, monkeypatch):
    real = serving_module.build_engine

    def broken(engine, model, sig, inputs, tmp, s):
        if engine == "compile":
            raise RuntimeError("no compiler here")
        runs, record = real(engine, model, sig, inputs, tmp, s)
        if engine == "onnxruntime":  # outputs off by one
            runs = {b: (lambda run=run: [out + 1 for out in run()]) for b, run in runs.items()}
        return runs, record

    monkeypatch.setattr(serving_module, "build_engine", broken)
    found = measure_serving({"teacher": dirs["teacher"]}, SETTINGS)
    cells = found["models"]["teacher"]["engines"]
    assert cells["compile"] == {"available": False, "reason": "RuntimeError: no compiler here"}
    assert not cells["onnxruntime"]["available"] and "differs from eager by 1" in cells["onnxruntime"]["reason"]
    assert cells["eager"]["available"] and cells["eager"]["latency_ms"] > 0
    text = format_serving(parse_serving(found))
    assert "teacher in compile: unavailable, RuntimeError: no compiler here." in text


def _run(dirs, record) -> dict:
    facts = {name: describe(dirs[name], 16) for name in ("teacher", "student")}
    return {
        "title": "serving",
        "task": "SST-2",
        "metric": "accuracy",
        "teacher": {"path": str(dirs["teacher"]), "dev": {"accuracy": 0.9}, "report": facts["teacher"]},
        "students": [
            {
                "name": "student",
                "path": str(dirs["student"]),
                "dev": {"accuracy": 0.8},
                "report": facts["student"],
                "decomposition": {
                    "method": "tucker",
                    "rank": 8,
                    "slots": ["q"],
                    "relative_error": 0.5,
                    "relative_error_per_layer_slot": [[0.5]],
                    "spectra": {},
                },
            }
        ],
        "stages": [],
        "serving": record,
    }


def test_the_table_renders_the_record(dirs, record):
    parsed = parse_run(_run(dirs, record))
    intro, sections = build_document(parsed, plot_names(parsed))
    markdown = to_markdown(parsed.title, intro, sections)
    body = markdown.split("## What you ship\n", 1)[1].split("\n## ", 1)[0]
    table = body.strip().split("\n\n", 1)[0]  # the first table; the speed-ups follow
    rows = {r.strip("|").split(" | ")[0].strip(): r for r in table.splitlines() if r.startswith("| ")}
    header = [c.strip() for c in rows["model"].strip("|").split(" | ")]
    assert header[:4] == ["model", "params", "bytes on disk", "matrices"]
    assert header[4:7] == ["eager b1 ms", "compile b1 ms", "ORT b1 ms"]
    assert header[7:] == ["eager b4 seq/s", "compile b4 seq/s", "ORT b4 seq/s", "peak MB (eager / compile / ORT)"]
    for name, facts in record["models"].items():
        cells = [c.strip() for c in rows[name + (" (int8)" if facts["int8"] else "")].strip("|").split(" | ")]
        assert cells[1] == f"{facts['parameters']:,}" and cells[2].startswith(f"{facts['disk_bytes']:,} (")
        assert cells[4] == f"{facts['engines']['eager']['latency_ms']:,.2f}"
    int8 = [c.strip() for c in rows["int8 (int8)"].strip("|").split(" | ")]
    assert int8[6] == "unavailable" and int8[9] == "unavailable"
    assert "int8 in onnxruntime: unavailable, torch.onnx.export cannot export" in body
    header_text, rows_text = serving_rows(parsed.serving)
    assert len(rows_text) == 3 and all(len(r) == len(header_text) for r in rows_text)


def test_a_bad_value_or_missing_cell_names_its_location(dirs, record):
    bad = copy.deepcopy(record)
    bad["models"]["student"]["engines"]["eager"]["latency_ms"] = "fast"
    with pytest.raises(TensorslimError, match=r"run\['serving'\]\['models'\]\['student'\]\['engines'\]\['eager'\]"):
        parse_run(_run(dirs, bad))
    missing = copy.deepcopy(record)
    del missing["models"]["teacher"]["engines"]["compile"]
    with pytest.raises(TensorslimError, match=r"missing key 'compile' at run\['serving'\]\['models'\]\['teacher'\]"):
        parse_run(_run(dirs, missing))
    unmeasured = copy.deepcopy(record)
    del unmeasured["models"]["student"]
    with pytest.raises(TensorslimError, match=r"run\['serving'\] has no measurement of \['student'\]"):
        parse_run(_run(dirs, unmeasured))


def test_report_settings_refuse_int8_without_serving_and_a_float_int8(dirs):
    with pytest.raises(TensorslimError, match="--int8 is measured by --serving only"):
        check_report_settings(dirs["student"], None, 4, 16, 1.0, "cpu", None, None, dirs["int8"])
    with pytest.raises(TensorslimError, match="is not an int8 model"):
        check_report_settings(dirs["student"], None, 4, 16, 1.0, "cpu", None, SETTINGS, dirs["teacher"])
    with pytest.raises(TensorslimError, match="unknown serving engines"):
        check_report_settings(dirs["student"], None, 4, 16, 1.0, "cpu", None, ServingSettings(engines=("tvm",)))


def test_peak_memory_of_a_fresh_process_holds_the_weights(tiny_bert_dir):
    """A BERT with a real vocabulary (4 MB of weights): the peak of each engine's process, above its
    state before loading, is at least the size of the weights it loaded, and at least the resident
    size after loading."""
    settings = ServingSettings(seq_len=16, throughput_batch=4, seconds=0.02, engines=("eager", "onnxruntime"))
    found = measure_serving({"model": tiny_bert_dir}, settings)
    weights = found["models"]["model"]["disk_bytes"] / 2**20
    for engine in settings.engines:
        memory = found["models"]["model"]["engines"][engine]["memory"]
        assert "reason" not in memory, memory
        assert memory["peak_mb"] >= memory["loaded_mb"] > 0 and memory["peak_mb"] >= 0.9 * weights, (engine, memory)


def test_tensorslim_reports_json_and_table_carry_the_serving_record(tiny_bert_dir, tmp_path):
    """`tensorslim report --serving --int8 DIR` (its speed section needs a real vocabulary)."""
    decompose_to_dir(tiny_bert_dir, tmp_path / "student", "tucker", rank=8, layer_rank=2)
    export_to_dir(tmp_path / "student", tmp_path / "int8", "int8")
    settings = ServingSettings(seq_len=16, throughput_batch=4, seconds=0.02, engines=("eager",), memory=False)
    report = model_report(
        tmp_path / "student",
        tiny_bert_dir,
        seq_len=16,
        batch_size=4,
        seconds=0.02,
        serving=settings,
        int8_dir=tmp_path / "int8",
    )
    served = report["serving"]
    assert list(served["models"]) == ["teacher", "model", "int8"] and served["baseline"] == "teacher"
    assert served["models"]["model"]["parameters"] == report["model"]["parameters"]["total"]
    text = format_report(report)
    assert "eager b1 ms" in text and f"{served['models']['int8']['disk_bytes']:,}" in text
