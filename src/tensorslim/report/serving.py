"""What a user ships, measured side by side: per model directory (teacher, students, an int8 export),
its parameters, bytes on disk and the paper's matrix weights, and in each engine (eager PyTorch,
`torch.compile`, ONNX Runtime) the latency at batch 1, the throughput at batch 32 and the peak memory.

Every engine runs the whole model as exported (`compress.graph.Graph`: the tokenizer's tensors in,
the model's outputs out) on the same random inputs of `seq_len` tokens. The ONNX graph is written by
the export code (`compress.export.write_onnx`, which checks it in ONNX Runtime against the model) to a
temporary directory. Before any timing each engine's outputs at the throughput batch are compared
with eager's; an engine that cannot be built, fails, or differs by more than `TOLERANCE` is
"unavailable" with the reason, never a crash. All available (model, engine) contenders are timed in
the same interleaved rounds (`timing.compare`), once per batch size; speed-ups are per-round ratios
against the first model in the same engine.

Peak memory: each (model, engine) in a fresh spawned process, which loads the model (or the ONNX
session), runs one warm-up call at the throughput batch, resets the kernel's resident high-water mark
(Linux `/proc/self/clear_refs`) and runs one more call. Peak = that high-water mark (VmHWM) minus the
resident size before the model was loaded (after the imports): weights, engine state and the call's
working memory. Without the reset, the process's lifetime peak (`ru_maxrss`) is used and so named.
docs/report.md states the columns.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import resource
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..compress.counts import count_parameters, matrix_weights
from ..compress.export import ONNX_FILE, TOLERANCE, summary, write_onnx
from ..compress.graph import Graph, Signature, example_inputs, max_abs_difference, signature
from ..compress.loading import load_model
from ..compress.section import int8_entry
from ..errors import TensorslimError
from ..families import get_family
from ..validate import check_above, check_at_least
from .timing import MAX_SPREAD, Comparison, Spread, compare, measuring_threads

log = logging.getLogger(__name__)

ENGINES = ("eager", "compile", "onnxruntime")
#: files of a model directory that hold its weights (safetensors, PyTorch pickles, int8's model_int8.pt)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
MB = 2**20


@dataclass(frozen=True)
class ServingSettings:
    """What `measure_serving` measures: sequence length, the two batch sizes, seconds per contender per
    timing attempt, the engines, whether to measure peak memory, torch / ONNX Runtime threads (None:
    torch's, capped at the available cores) and torch.compile's backend."""

    seq_len: int = 128
    latency_batch: int = 1
    throughput_batch: int = 32
    seconds: float = 3.0
    engines: tuple[str, ...] = ENGINES
    memory: bool = True
    threads: int | None = None
    compile_backend: str = "inductor"


def check_serving_settings(s: ServingSettings) -> None:
    """Refuse settings that cannot be measured, before any model is loaded."""
    for flag, value in (
        ("--seq-length", s.seq_len),
        ("--batch-size", s.throughput_batch),
        ("latency batch", s.latency_batch),
        ("--threads", s.threads),
    ):
        check_at_least(flag, value, 1)
    check_above("--seconds", s.seconds, 0)
    unknown = [e for e in s.engines if e not in ENGINES]
    if unknown or not s.engines:
        raise TensorslimError(f"unknown serving engines {unknown or s.engines}", f"use some of {', '.join(ENGINES)}")


# ----------------------------------------------------------------------------- what is stored


def weight_files(model_dir: str | Path) -> dict[str, int]:
    """{file name: bytes} of the weight files in `model_dir` (WEIGHT_SUFFIXES)."""
    return {p.name: p.stat().st_size for p in sorted(Path(model_dir).iterdir()) if p.suffix in WEIGHT_SUFFIXES}


def _quantized_modules(model: nn.Module):
    """(name, module) of torch's quantised layers in `model`: dynamic int8 Linear, int8-row Embedding."""
    from torch.ao.nn.quantized import Embedding
    from torch.ao.nn.quantized.dynamic import Linear

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (Linear, Embedding))]


def stored_counts(model) -> tuple[int, int]:
    """(parameters, matrix weights as the paper counts them) of a loaded model. Float models:
    counts.count_parameters()["total"] and counts.matrix_weights(). An int8 model's quantised
    Linear and Embedding layers hold their weights in packed form, outside .parameters(): they are
    added to the total, and its matrices are the quantised layers in the layer stack and the shared
    input sides."""
    if int8_entry(model.config) is None:
        return count_parameters(model)["total"], matrix_weights(model)
    total, matrices = count_parameters(model)["total"], 0
    stack = (f"{model.base_model_prefix}.{get_family(model.config).layers}.", f"{model.base_model_prefix}.tensorslim_")
    for name, module in _quantized_modules(model):
        weight, bias = module.weight(), getattr(module, "bias", lambda: None)()
        total += weight.numel() + (bias.numel() if bias is not None else 0)
        if name.startswith(stack):
            matrices += weight.numel()
    return total, matrices


def model_facts(model_dir: str | Path, model) -> dict:
    """Path, parameters, bytes of the weight files on disk (each and summed) and matrix weights."""
    files = weight_files(model_dir)
    parameters, matrices = stored_counts(model)
    return {
        "path": str(model_dir),
        "int8": int8_entry(model.config) is not None,
        "parameters": parameters,
        "matrix_weights": matrices,
        "disk_bytes": sum(files.values()),
        "weight_files": files,
    }


# ----------------------------------------------------------------------------- engines


def _inputs(model, sig: Signature, batch: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    return example_inputs(model, sig, batch, seq_len, 0, seed=batch)


def _torch_call(graph: nn.Module, inputs: tuple):
    def run():
        with torch.no_grad():
            return graph(*inputs)

    return run


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_call(session, sig: Signature, inputs: tuple):
    feeds = {name: t.numpy() for name, t in zip(sig.input_names(), inputs)}
    names = sig.output_names()
    return lambda: session.run(names, feeds)


def build_engine(engine: str, model, sig: Signature, inputs: dict[int, tuple], tmp: Path, s: ServingSettings):
    """{batch: callable} running `model` in `engine` on `inputs` ({batch: tensors}), and a record
    (ONNX: the export's own check). Raises whatever the engine raises."""
    graph = Graph(model, sig).eval()
    if engine == "eager":
        return {b: _torch_call(graph, x) for b, x in inputs.items()}, {}
    if engine == "compile":
        options = {"freezing": True} if s.compile_backend == "inductor" else None
        compiled = torch.compile(graph, backend=s.compile_backend, options=options, dynamic=False)
        return {b: _torch_call(compiled, x) for b, x in inputs.items()}, {"backend": s.compile_backend}
    tmp.mkdir(parents=True)
    record = write_onnx(model, sig, tmp, None, TOLERANCE)
    session = _session(tmp / ONNX_FILE, torch.get_num_threads())
    return {b: _ort_call(session, sig, x) for b, x in inputs.items()}, {"export_check": record["check"]["max_abs_diff"]}


def _unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def _prepare(name: str, model, s: ServingSettings, tmp: Path) -> tuple[dict, dict]:
    """({engine: cell}, {engine: {batch: callable}}) of one model: each engine built, warmed at both
    batches (compiles) and checked against eager at the throughput batch."""
    sig = signature(model)
    inputs = {b: _inputs(model, sig, b, s.seq_len) for b in (s.latency_batch, s.throughput_batch)}
    with torch.no_grad():
        expected = Graph(model, sig).eval()(*inputs[s.throughput_batch])
    cells, calls = {}, {}
    for engine in s.engines:
        try:
            runs, record = build_engine(engine, model, sig, inputs, tmp / f"{engine}", s)
            outputs = [runs[b]() for b in inputs][-1]  # warm-up of every shape; compiles here
        except Exception as exc:  # noqa: BLE001  (engines raise their own types; the cell says why)
            reason = exc.problem if isinstance(exc, TensorslimError) else f"{type(exc).__name__}: {summary(exc)}"
            log.warning("%s in %s is unavailable: %s", name, engine, reason)
            cells[engine] = _unavailable(reason)
            continue
        diff, where = max_abs_difference(sig.output_names(), outputs, expected)
        if not diff <= TOLERANCE:
            cells[engine] = _unavailable(f"differs from eager by {diff:.3g} in {where} (tolerance {TOLERANCE:g})")
            continue
        cells[engine] = {"available": True, "reason": "", "max_abs_diff": diff, **record}
        calls[engine] = {"inputs": inputs, "signature": sig, "runs": runs}
    return cells, calls


# ----------------------------------------------------------------------------- timing


def _per_engine_speedups(result: Comparison, first: str, names: list[str], engine: str) -> dict:
    """{model: {median, spread}} of the per-round ratios first model / model, both in `engine`."""
    seconds = result.result.seconds
    base = seconds.get(f"{first}/{engine}")
    out = {}
    for name in names:
        if name == first:
            continue
        mine = seconds.get(f"{name}/{engine}")
        if base is None or mine is None:
            continue
        ratio = Spread.of([b / t for b, t in zip(base.values, mine.values, strict=True)])
        steady = result.trusted and ratio.spread <= result.limits["max_spread"]
        out[name] = {"median": ratio.median if steady else None, "spread": ratio.spread}
    return out


def _timing(result: Comparison) -> dict:
    r = result.result
    return {"trusted": result.trusted, "reason": result.reason, "attempts": len(result.attempts)} | {
        "foreign_cores": r.foreign_cores,
        "max_spread": result.limits["max_spread"],
    }


# ----------------------------------------------------------------------------- peak memory


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_memory(job: dict) -> dict:
    """Run in a fresh process: the peak resident memory of one call at the throughput batch (module doc).
    `job`: engine, path (model directory or ONNX file), signature (as a dict), inputs (numpy arrays),
    threads, backend."""
    with contextlib.suppress(ImportError):  # imported before the baseline, like torch
        import onnxruntime  # noqa: F401
    torch.set_num_threads(job["threads"])
    before = _status("VmRSS")
    sig = Signature(**job["signature"])
    if job["engine"] == "onnxruntime":
        call = _ort_call(_session(Path(job["path"]), job["threads"]), sig, tuple(map(torch.from_numpy, job["inputs"])))
    else:
        graph = Graph(load_model(job["path"]).eval(), sig).eval()
        if job["engine"] == "compile":
            options = {"freezing": True} if job["backend"] == "inductor" else None
            graph = torch.compile(graph, backend=job["backend"], options=options, dynamic=False)
        call = _torch_call(graph, tuple(torch.from_numpy(x) for x in job["inputs"]))
    call()
    loaded = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        call()
        peak, how = _status("VmHWM"), "VmHWM (reset after a warm-up call)"
    except OSError:
        call()
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (process lifetime)"
    return {"peak_mb": (peak - before) / MB, "loaded_mb": (loaded - before) / MB, "how": how}


def _memory_job(engine: str, path: Path, tmp: Path, prepared: dict, s: ServingSettings, threads: int) -> dict:
    return {
        "engine": engine,
        "path": str(tmp / engine / ONNX_FILE if engine == "onnxruntime" else path),
        "signature": asdict(prepared["signature"]),
        "inputs": [t.numpy() for t in prepared["inputs"][s.throughput_batch]],
        "threads": threads,
        "backend": s.compile_backend,
    }


def measure_memory(job: dict) -> dict:
    """peak_memory(job) in a fresh spawned process ({"reason"} when it fails)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(peak_memory, job).result()
        except Exception as exc:  # noqa: BLE001  (the child's error, whatever it is, is the reason)
            return {"reason": f"{type(exc).__name__}: {summary(exc)}"}


# ----------------------------------------------------------------------------- all together


def measure_serving(model_dirs: Mapping[str, str | Path], settings: ServingSettings | None = None) -> dict:
    """The serving record of the models in `model_dirs` ({name: directory}; the first is the baseline
    of the speed-ups): settings, per model its facts and one cell per engine, and the two timings'
    verdicts. JSON-able; keys in docs/report.md."""
    s = settings or ServingSettings()
    check_serving_settings(s)
    names = list(model_dirs)
    models = {name: load_model(path).eval() for name, path in model_dirs.items()}
    record = {name: model_facts(model_dirs[name], model) | {"engines": {}} for name, model in models.items()}
    with (
        measuring_threads(s.threads) as plan,
        tempfile.TemporaryDirectory(prefix="tensorslim-serving-") as tmp,
        torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=4096),
    ):
        prepared = {}
        for name, model in models.items():
            cells, prepared[name] = _prepare(name, model, s, Path(tmp) / str(len(prepared)))
            record[name]["engines"] = cells
        timings = {}
        for key, batch in (("latency", s.latency_batch), ("throughput", s.throughput_batch)):
            contenders = {f"{n}/{e}": p["runs"][batch] for n in names for e, p in prepared[n].items()}
            result = compare(contenders, seconds=s.seconds, cores=plan["cores"])
            timings[key] = _timing(result)
            for engine in s.engines:
                for name, ratio in _per_engine_speedups(result, names[0], names, engine).items():
                    record[name]["engines"][engine][f"{key}_speedup"] = ratio
            for contender, spread in result.result.seconds.items():
                name, engine = contender.rsplit("/", 1)
                cell = record[name]["engines"][engine]
                if key == "latency":
                    cell.update(latency_ms=spread.median * 1000, latency_spread=spread.spread)
                else:
                    cell.update(throughput_seq_per_s=batch / spread.median, throughput_spread=spread.spread)
        if s.memory:
            for i, name in enumerate(names):
                for engine, p in prepared[name].items():
                    job = _memory_job(engine, Path(model_dirs[name]), Path(tmp) / str(i), p, s, plan["threads"])
                    record[name]["engines"][engine]["memory"] = measure_memory(job)
        torch._dynamo.reset()  # the compiled graphs hold the models
    return {
        "settings": asdict(s) | {"engines": list(s.engines), "threads": plan["threads"], "cores": plan["cores"]},
        "baseline": names[0],
        "models": record,
        "timing": timings,
        "warnings": plan["warnings"],
        "max_spread": MAX_SPREAD,
    }
