"""A model directory (a student, or any supported dense model) -> what a user ships: the dense model in
its original class (`dense`), an ONNX graph (`onnx`) or the model in dynamic int8 for CPU serving
(`int8`, `compress.int8`), each checked against the model it came from before it is kept, with the
numbers in export.json.

ONNX goes through `torch.onnx.export` (the torch.export-based exporter) with dynamic batch and sequence
axes (and past-sequence axes for a decoder's KV cache; see `graph`); a student exports its factored
forward as it is. The graph is then run in ONNX Runtime on inputs of several shapes against PyTorch;
a difference above the tolerance fails the export and nothing is written. int8 is checked by the mean
cosine similarity of its output vectors (a token's hidden state or logits, a sequence's logits) to the
float model's, and its reload must equal it exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel

from ..errors import TensorslimError
from ..io import atomic_dir, check_output_dir, write_json
from ..validate import check_above, check_finite_weights, check_fraction
from .api import export_dense, merge_where_faster
from .graph import (
    CHECK_SHAPES,
    TRACE_SHAPE,
    Graph,
    Signature,
    cosines,
    dynamic_shapes,
    example_inputs,
    max_abs_difference,
)
from .graph import signature as graph_signature
from .inplace import is_decomposed
from .int8 import SCHEME, WEIGHTS, check_float, load_int8, quantize, save_int8
from .loading import HEADS, infer_head, load_config, load_model, save_tokenizer
from .section import section_of

log = logging.getLogger(__name__)

FORMATS = ("onnx", "dense", "fastest", "int8")
#: largest absolute difference an export may show against the model (float32 outputs)
TOLERANCE = 1e-4
#: lowest mean cosine similarity an int8 model's output vectors may show against the float model's
MIN_COSINE = 0.98
#: the lowest opset torch.onnx writes without converting its graph
MIN_OPSET = 18
ONNX_FILE = "model.onnx"
RECORD = "export.json"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def check_export_settings(fmt: str, opset: int | None, tolerance: float | None, min_cosine: float | None) -> None:
    """Refuse a format, opset, tolerance or cosine that cannot work, and missing ONNX packages, before any loading."""
    if fmt not in FORMATS:
        raise TensorslimError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    check_above("--tolerance", tolerance, 0)
    check_fraction("--min-cosine", min_cosine, open_low=True)
    if fmt == "int8" and tolerance is not None:
        raise TensorslimError(
            "--tolerance applies to --format onnx, dense and fastest only",
            "int8 is checked by cosine: pass --min-cosine",
        )
    if fmt != "int8" and min_cosine is not None:
        raise TensorslimError("--min-cosine applies to --format int8 only", "drop --min-cosine, or pass --format int8")
    if fmt != "onnx":
        if opset is not None:
            raise TensorslimError("--opset applies to --format onnx only", "drop --opset, or pass --format onnx")
        return
    missing = []
    for name in ONNX_PACKAGES:
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        raise TensorslimError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            "pip install 'tensorslim[export]' (or: pip install onnx onnxscript onnxruntime)",
        )
    if opset is not None:
        import onnx

        highest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= highest:
            raise TensorslimError(
                f"--opset {opset} is out of range",
                f"pass an opset from {MIN_OPSET} (the lowest torch.onnx writes natively) to {highest} "
                f"(the highest onnx {version('onnx')} knows)",
            )


def export_to_dir(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    opset: int | None = None,
    tolerance: float | None = None,
    min_cosine: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Export the float model in `model_dir` to directory `out` as `fmt` ("onnx", "dense", "fastest" or
    "int8"), with its config, tokenizer and export.json (the check's numbers); return that record. onnx,
    dense and fastest are float32 and checked to `tolerance` (default TOLERANCE), int8 to `min_cosine`
    (default MIN_COSINE)."""
    check_export_settings(fmt, opset, tolerance, min_cosine)
    config = load_config(model_dir)
    check_float(config, model_dir)
    if fmt == "fastest" and section_of(config) is None:
        raise TensorslimError(
            f"{model_dir} is not a decomposed student: --format fastest chooses between its factored and dense forms",
            "pass a student from `tensorslim decompose` (or `distill`)",
        )
    check_output_dir(out, "export", inputs=[model_dir], overwrite=overwrite)
    check_finite_weights(model_dir)
    model = load_model(model_dir, config=config, dtype=torch.float32).eval()
    sig = graph_signature(model, tokenizer_inputs(model_dir))
    with atomic_dir(out, "export", inputs=[model_dir], overwrite=overwrite) as tmp:
        if fmt == "onnx":
            record = write_onnx(model, sig, Path(tmp), opset, TOLERANCE if tolerance is None else tolerance)
        elif fmt == "dense":
            record = write_dense(model, sig, Path(tmp), TOLERANCE if tolerance is None else tolerance)
        elif fmt == "fastest":
            record = write_fastest(model, sig, Path(tmp), TOLERANCE if tolerance is None else tolerance)
        else:
            record = write_int8(model, sig, Path(tmp), MIN_COSINE if min_cosine is None else min_cosine, model_dir)
        save_tokenizer(model_dir, tmp)
        record = {
            "format": fmt,
            "model": str(Path(model_dir).resolve()),
            "architecture": type(model).__name__,
            "decomposed": is_decomposed(model),
            **record,
            "files": {p.name: p.stat().st_size for p in sorted(Path(tmp).iterdir()) if p.is_file()},
            "versions": package_versions(fmt),
        }
        write_json(Path(tmp) / RECORD, record)
    check = record["check"]
    log.info(
        "wrote %s (%s of %s): largest difference from the model %.2e, cosine %.6f (mean), %.6f (least) over "
        "%d input shapes",
        out,
        fmt,
        record["architecture"],
        check["max_abs_diff"],
        check["mean_cosine"],
        check["min_cosine"],
        len(check["cases"]),
    )
    return record


def tokenizer_inputs(model_dir: str | Path) -> list[str] | None:
    """The tensors the model directory's tokenizer makes (None without a tokenizer)."""
    try:
        return list(AutoTokenizer.from_pretrained(model_dir).model_input_names)
    except (OSError, ValueError, TypeError):
        return None


def write_onnx(model: PreTrainedModel, sig: Signature, out: Path, opset: int | None, tolerance: float) -> dict:
    """model.onnx (+ model.onnx.data for graphs past protobuf's 2 GB) and config.json in `out`, checked in
    ONNX Runtime against `model`."""
    import onnxruntime as ort

    batch, length, past = TRACE_SHAPE
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                Graph(model, sig).eval(),
                example_inputs(model, sig, batch, length, past if sig.cache_layers else 0),
                dynamo=True,
                dynamic_shapes=dynamic_shapes(sig),
                input_names=sig.input_names(),
                output_names=sig.output_names(),
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:  # the exporter's errors have no common base class
        raise TensorslimError(
            f"torch.onnx.export cannot export this {type(model).__name__}: {summary(exc)}",
            "run with --debug for the exporter's full report; `--format dense` still writes the merged model",
        ) from exc
    path = out / ONNX_FILE
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise TensorslimError(
            f"onnxruntime {ort.__version__} cannot load the exported graph: {summary(exc)}",
            "pass a lower --opset (onnxruntime runs graphs up to the opset it was built for)",
        ) from exc
    names = sig.output_names()
    run = lambda inputs: session.run(names, dict(zip(sig.input_names(), (t.numpy() for t in inputs))))  # noqa: E731
    check = compare(model, sig, run, f"the ONNX graph in onnxruntime {ort.__version__}", tolerance=tolerance)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the graph holds the forward; transformers needs no loader for it
    config.save_pretrained(out)
    return {
        "opset": program.model.opset_imports[""],
        "inputs": {i.name: i.shape for i in session.get_inputs()},
        "outputs": {o.name: o.shape for o in session.get_outputs()},
        "check": check,
    }


@contextlib.contextmanager
def quiet_exporter():
    """Keep the exporter's progress out of the command's log: onnx_ir and onnxscript log every pass at
    INFO, torch.onnx warns about optional torchvision operators and about axis names it merged, and
    torch.export about its own deprecations."""
    loggers = {name: logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(logging.ERROR if name == "torch.onnx" else logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def summary(exc: Exception) -> str:
    """The line of an exporter's or runtime's error that says what failed (torch.onnx puts it under
    "Exception summary", after its own advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "## Exception summary" in lines and lines.index("## Exception summary") + 1 < len(lines):
        return lines[lines.index("## Exception summary") + 1]
    return lines[0] if lines else type(exc).__name__


def write_dense(model: PreTrainedModel, sig: Signature, out: Path, tolerance: float) -> dict:
    """The merged model in its original class (save_pretrained) in `out`, reloaded and checked against `model`."""
    dense = export_dense(model) if is_decomposed(model) else model
    if dense is model:
        log.info("the model is not decomposed: its dense export is the model itself")
    dense.save_pretrained(out)
    reloaded = HEADS[infer_head(model.config, model)].from_pretrained(out, dtype=torch.float32).eval()
    theirs = Graph(reloaded, sig)
    check = compare(
        model, sig, lambda inputs: theirs(*inputs), f"the reloaded {type(reloaded).__name__}", tolerance=tolerance
    )
    return {"check": check}


def write_fastest(model: PreTrainedModel, sig: Signature, out: Path, tolerance: float) -> dict:
    """The student with the projections whose dense matrix takes no more multiply-adds per token merged
    back (`merge_where_faster`, the choice recorded in its config) in `out`, reloaded and checked against
    `model`; the record also says what was merged and the multiply-adds per token before and after."""
    fastest = copy.deepcopy(model)
    merged = merge_where_faster(fastest)
    fastest.save_pretrained(out)
    reloaded = Graph(load_model(out, dtype=torch.float32).eval(), sig)
    check = compare(model, sig, lambda inputs: reloaded(*inputs), "the reloaded merged student", tolerance=tolerance)
    return {
        "check": check,
        "merged": len(merged["merged"]),
        "factored": merged["factored"],
        "macs_per_token": merged["macs_per_token"],
    }


def write_int8(model: PreTrainedModel, sig: Signature, out: Path, min_cosine: float, model_dir: str | Path) -> dict:
    """`model` in dynamic int8 (model_int8.pt + config.json, `compress.int8`) in `out`, checked against
    `model` by cosine; its reload must give exactly the same outputs."""
    int8 = quantize(copy.deepcopy(model))
    save_int8(int8, out)
    ours, reloaded = Graph(int8, sig), Graph(load_int8(out), sig)
    same = compare(
        int8,
        sig,
        lambda inputs: reloaded(*inputs),
        "the reloaded int8 model",
        tolerance=0.0,
        fix=f"report it: {WEIGHTS} does not hold the model it was saved from",
    )
    check = compare(model, sig, lambda inputs: ours(*inputs), "the int8 model", min_cosine=min_cosine)
    before = sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        "scheme": SCHEME,
        "check": check,
        "reload": {"max_abs_diff": same["max_abs_diff"]},
        "weights_bytes": {"float32": before, "int8": (out / WEIGHTS).stat().st_size},
    }


@torch.no_grad()
def compare(
    model: PreTrainedModel,
    sig: Signature,
    run: Callable[[tuple], Sequence],
    what: str,
    *,
    tolerance: float | None = None,
    min_cosine: float | None = None,
    fix: str | None = None,
) -> dict:
    """Run `run` (the export) and `model` on inputs of every shape of CHECK_SHAPES (those with a past
    only for graphs with a cache); refuse a largest difference above `tolerance`, or a mean cosine
    similarity of an output's vectors below `min_cosine` (whichever is given)."""
    ours = Graph(model, sig)
    names = sig.output_names()
    cases = []
    for seed, (batch, length, past) in enumerate(CHECK_SHAPES):
        if past and not sig.cache_layers:
            continue
        inputs = example_inputs(model, sig, batch, length, past, seed=seed)
        theirs, expected = run(inputs), ours(*inputs)
        diff, where = max_abs_difference(names, theirs, expected)
        sims = cosines(names, theirs, expected)
        least = min(sims, key=lambda name: sims[name].mean().item())
        cases.append(
            {"batch": batch, "sequence": length, "past_sequence": past, "max_abs_diff": diff, "in": where}
            | {"mean_cosine": sims[least].mean().item(), "cosine_in": least}
            | {"min_cosine": min(c.min().item() for c in sims.values())}
        )
    worst = max(cases, key=lambda c: c["max_abs_diff"])
    least = min(cases, key=lambda c: c["mean_cosine"])
    shape = "(batch {batch}, sequence {sequence}, past {past_sequence})"
    if tolerance is not None and not worst["max_abs_diff"] <= tolerance:
        raise TensorslimError(
            f"{what} differs from the model by {worst['max_abs_diff']:.3g} in {worst['in']} "
            f"{shape.format(**worst)}, above the tolerance {tolerance:g}; nothing was written",
            fix or "report it with the model's family; a larger --tolerance accepts it",
        )
    if min_cosine is not None and not least["mean_cosine"] >= min_cosine:
        raise TensorslimError(
            f"{what} has a mean cosine similarity of {least['mean_cosine']:.4f} to the model in {least['cosine_in']} "
            f"{shape.format(**least)}, below --min-cosine {min_cosine:g}; nothing was written",
            fix or "the model does not survive int8; a smaller --min-cosine accepts it",
        )
    return {
        "against": what,
        **({"tolerance": tolerance} if tolerance is not None else {"min_cosine_allowed": min_cosine}),
        "max_abs_diff": worst["max_abs_diff"],
        "mean_cosine": least["mean_cosine"],
        "min_cosine": min(c["min_cosine"] for c in cases),
        "cases": cases,
    }


def package_versions(fmt: str) -> dict[str, str]:
    names = ("torch", "transformers", *(ONNX_PACKAGES if fmt == "onnx" else ()))
    return {name: version(name) for name in names}
