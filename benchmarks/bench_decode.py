"""Decode speed and memory of decoder students against the dense model (issue 13), side by side in one
run: SmolLM2-135M dense, and lowrank / shared / tucker students with 30% and 50% of the decoder-layer
matrix weights removed (made in memory, HOSVD only: speed does not depend on the fit), each as
decomposed ("factored") and after `merge_where_faster` ("merged": the projections whose dense matrix
takes no more work per token merged back; listed only where it merged something).

For every model, eager and `torch.compile` (inductor with freezing, so that the products of factors
are folded into constants once; docs/decomposition.md, section 4):
- decode: batch-1 greedy generation with the KV cache, a `--prompt-tokens` prompt (random ids) and
  exactly `--new-tokens` new tokens, tokens/s of the whole call (tensorslim.report.decode, the call
  `tensorslim demo --model llm` times too);
- prefill: one forward of `--prefill-batch` x `--prefill-length` tokens building the KV cache (logits
  of the last position only, as generate's prefill), in tokens/s;
- weights: parameter bytes; MACs/token: multiply-adds of the layers' projections per token;
- peak memory: in a fresh process per model and mode (the model saved and loaded back, so a merged
  student's recorded choice is what runs): the highest resident set size during a warm decode / a warm
  prefill (Linux VmHWM, reset before the call), minus the resident size before the model loaded.
Each student is timed together with the dense model, in interleaved rounds (benchmarks/common.timed),
one student at a time (only the dense model, one student and their compiled graphs in memory); the
dense rows give the median over those pairs. A speed-up is "not measured" when the machine was too
busy to trust it.

    python benchmarks/bench_decode.py [--methods lowrank shared tucker] [--levels 30 50]
        [--layouts default 2:down 1] [--students DIR ...] [--new-tokens 128] [--no-compile]
        [--no-memory] [--forms factored merged] [--quick]

`--students DIR ...` times saved students of SmolLM2 as well (from `tensorslim decompose --out DIR`
or `bench_llm_compression.py --save-students`: fitted with whatever data, weighting and allocation
they were given), and only them unless `--methods` is given too.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils.logging import disable_progress_bar

from tensorslim.compress.api import decompose, merge_where_faster
from tensorslim.compress.counts import flops_per_token
from tensorslim.compress.factored import FactoredProjection
from tensorslim.compress.inplace import targets
from tensorslim.compress.loading import load_config, load_model
from tensorslim.report.decode import decode_call, prompt_ids
from tensorslim.report.timing import Spread, measuring_threads

from common import NOT_MEASURED, emit, timed, verdict

NAME = "decode"
MB = 2**20
log = logging.getLogger("bench_decode")


# ----------------------------------------------------------------------------- models


def teacher(quick: bool) -> LlamaForCausalLM:
    """SmolLM2-135M (the packaged decoder), or with --quick a random tiny Llama."""
    if quick:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=160,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config).eval()
    from tensorslim.data.packaged_llm import smollm2_dir

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).eval()


def layout_options(spec: str) -> tuple[str, dict]:
    """A --layouts entry -> (name suffix, shared/tucker options): "default" (the model kind's), or
    "<layer window>[:<private parts>]" such as "2:down"."""
    if spec == "default":
        return "", {}
    window, _, parts = spec.partition(":")
    return f" w{window}" + (f" private {parts}" if parts else ""), {
        "layer_window": int(window),
        "private_parts": parts or "none",
    }


def models(dense, methods: list[str], levels: list[int], forms: list[str], layouts: list[str], saved: list[Path]):
    """(name, model) of each student in the forms asked for, made one at a time from `dense`, then
    loaded one at a time from the `saved` directories."""
    for level in levels:
        for method in methods:
            for suffix, layout in map(layout_options, layouts if method != "lowrank" else ["default"]):
                options = {} if method == "lowrank" else {"max_iter": 0, **layout}
                student, _ = decompose(copy.deepcopy(dense), method, compression=level / 100, **options)
                student.eval()
                yield from forms_of(f"{method} {level}%{suffix}", student, forms)
    for directory in saved:
        yield from forms_of(directory.name, load_model(directory, dtype=torch.float32), forms)


def check_saved(directories: list[Path], dense) -> None:
    """Refuse, before any timing, a saved directory that is not a model of the dense model's shape."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    for directory in directories:
        config = load_config(directory)
        if any(getattr(config, k) != getattr(dense.config, k) for k in keys):
            raise SystemExit(f"{directory} is not a student of the dense model timed here ({', '.join(keys)} differ)")


def forms_of(name: str, student, forms: list[str]):
    """The student as decomposed and / or after merge_where_faster (when that merged something)."""
    if "factored" in forms:
        yield name, student
    if "merged" in forms:
        merged = copy.deepcopy(student) if "factored" in forms else student
        record = merge_where_faster(merged)
        if record["merged"] or "factored" not in forms:
            yield f"{name} merged", merged


def weight_bytes(model) -> int:
    """Bytes of the model's parameters (tied ones once)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def projections(model) -> str:
    """'factored / all' layer projections."""
    found = targets(model, "all")
    return f"{sum(isinstance(m, FactoredProjection) for _, m, _ in found)}/{len(found)}"


# ----------------------------------------------------------------------------- work


def prefill_call(model, batch: torch.Tensor):
    """A callable running the prompt pass of generation on `batch` (KV cache built, last logits only)."""
    mask = torch.ones_like(batch)

    def run() -> None:
        with torch.no_grad():
            model(input_ids=batch, attention_mask=mask, use_cache=True, logits_to_keep=1)

    return run


def compile_setup() -> None:
    """Inductor freezing (products of factors become constants, folded once) and room in dynamo's
    cache for every model of the run (they share LlamaForCausalLM.forward's code object)."""
    torch._inductor.config.freezing = True
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096


def compiled(model):
    """A callable wrapper: run `call` with model.forward compiled (made once per model, kept on it)."""
    if not hasattr(model, "_bench_compiled"):
        model._bench_compiled = torch.compile(model.forward, dynamic=True, fullgraph=True)

    def wrap(call):
        def run() -> None:
            model.forward = model._bench_compiled
            try:
                call()
            finally:
                del model.forward

        return run

    return wrap


# ----------------------------------------------------------------------------- memory (child process)


def status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_during(call) -> tuple[int, str]:
    """(peak resident bytes during `call`, how measured): VmHWM reset just before it, or the process's
    lifetime peak (getrusage) where the reset is not available."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        call()
        return status("VmHWM"), "VmHWM"
    except OSError:
        call()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (process lifetime)"


def memory_child(directory: str, mode: str, args) -> dict:
    """Peak memory of a warm decode and a warm prefill of the model saved in `directory`."""
    import tensorslim  # noqa: F401  (registers the student's config section)

    before = status("VmRSS")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    loaded = status("VmRSS")
    decode = decode_call(model, prompt_ids(model.config.vocab_size, 1, args.prompt_tokens), args.new_tokens)
    prefill = prefill_call(model, prompt_ids(model.config.vocab_size, args.prefill_batch, args.prefill_length))
    if mode == "compile":
        compile_setup()
        wrap = compiled(model)
        decode, prefill = wrap(decode), wrap(prefill)
    decode()  # warm: caches built, graphs compiled
    decode_peak, how = peak_during(decode)
    prefill()
    prefill_peak, _ = peak_during(prefill)
    return {
        "loaded_MB": (loaded - before) / MB,
        "decode_peak_MB": (decode_peak - before) / MB,
        "prefill_peak_MB": (prefill_peak - before) / MB,
        "how": how,
    }


def measure_memory(model, mode: str, args, threads: int) -> dict:
    """memory_child in a fresh process with `threads` torch threads, on `model` saved to a temporary
    directory."""
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        model.save_pretrained(tmp)
        settings = ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
        settings += ["--prefill-batch", str(args.prefill_batch), "--prefill-length", str(args.prefill_length)]
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-of", tmp, "--memory-mode", mode, *settings, "--threads", str(threads)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    if proc.returncode != 0:
        log.warning("peak memory (%s) failed: %s", mode, proc.stderr[-2000:])
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def work(model, measure: str, mode: str, prompt: torch.Tensor, batch: torch.Tensor, new_tokens: int):
    """The callable that runs `measure` ("decode" or "prefill") on `model` in `mode`."""
    call = decode_call(model, prompt, new_tokens) if measure == "decode" else prefill_call(model, batch)
    return compiled(model)(call) if mode == "compile" else call


def size(name: str, model, mode: str) -> dict:
    return {
        "model": name,
        "mode": mode,
        "factored": projections(model),
        "weights_MB": weight_bytes(model) / MB,
        "MACs_per_token_M": flops_per_token(model, 0) / 2e6,
    }


def main(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    disable_progress_bar()  # save_pretrained's per-model bars
    dense = teacher(args.quick)
    check_saved(args.students, dense)
    prompt = prompt_ids(dense.config.vocab_size, 1, args.prompt_tokens)
    batch = prompt_ids(dense.config.vocab_size, args.prefill_batch, args.prefill_length)
    tokens = {"decode": args.new_tokens, "prefill": batch.numel()}
    modes = ["eager"] if args.no_compile else ["eager", "compile"]
    rows, results, dense_seconds = [], [], {(mode, m): [] for mode in modes for m in tokens}
    with measuring_threads(args.threads) as plan:
        if "compile" in modes:
            compile_setup()
        baseline = {key: work(dense, key[1], key[0], prompt, batch, args.new_tokens) for key in dense_seconds}
        # one student at a time, in interleaved rounds with the dense model: only the dense model, the
        # student and their compiled graphs (each with its own folded, prepacked constants) are in memory
        for name, model in models(dense, args.methods, args.levels, args.forms, args.layouts, args.students):
            for mode in modes:
                row = size(name, model, mode)
                for measure in tokens:
                    calls = {
                        "dense": baseline[mode, measure],
                        name: work(model, measure, mode, prompt, batch, args.new_tokens),
                    }
                    if mode == "compile":
                        log.info("compiling %s for %s", name, measure)
                        for call in calls.values():  # every graph compiled before the timing
                            call()
                    result = timed(calls, seconds=args.seconds, rounds=args.rounds, cores=plan["cores"])
                    results.append(result)
                    dense_seconds[mode, measure].append(result.result.seconds["dense"].median)
                    seconds = result.result.seconds[name]
                    row[f"{measure}_tok_s"] = tokens[measure] / seconds.median
                    row[f"{measure}_spread"] = seconds.spread
                    speedup = result.speedup(name)
                    row[f"{measure}_x_dense"] = NOT_MEASURED if speedup is None else speedup
                rows.append({**row, **memory(model, mode, args, plan["threads"])})
            del model
            if "compile" in modes:  # drop every compiled graph (the dense model's recompiles for the next pair)
                torch._dynamo.reset()
            gc.collect()
        for mode in reversed(modes):  # the dense rows first: medians over the pairs, spread across them
            row = size("dense", dense, mode)
            for measure in tokens:
                over_pairs = Spread.of(dense_seconds[mode, measure])
                row[f"{measure}_tok_s"] = tokens[measure] / over_pairs.median
                row[f"{measure}_spread"] = over_pairs.spread
                row[f"{measure}_x_dense"] = 1.0
            rows.insert(0, {**row, **memory(dense, mode, args, plan["threads"])})
    what = "tiny random Llama (--quick)" if args.quick else "SmolLM2-135M"
    emit(
        NAME if not args.quick else f"{NAME}_quick",
        rows,
        notes=f"{what}, fp32, {plan['threads']} threads on {plan['cores']} cores; decode: batch 1, "
        f"{args.prompt_tokens}-token prompt + {args.new_tokens} new tokens; prefill: {args.prefill_batch} x "
        f"{args.prefill_length}; compile: inductor, freezing, dynamic shapes; each student timed in "
        "interleaved rounds with the dense model (its x_dense from those rounds; the dense rows: median "
        f"and spread over all pairs); {verdict(results)}; target: decode at batch 1 faster than dense at "
        "30% removed and above",
    )


def memory(model, mode: str, args, threads: int) -> dict:
    """The peak-memory columns (measure_memory), or none with --no-memory."""
    if args.no_memory:
        return {}
    found = measure_memory(model, mode, args, threads)
    return {**{k: v for k, v in found.items() if k != "how"}, "memory_by": found.get("how", "failed")}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", help="students made here (default: all three; none with --students)")
    p.add_argument("--levels", type=int, nargs="+", default=[30, 50], help="%% of matrix weights removed")
    p.add_argument("--students", nargs="+", type=Path, default=[], metavar="DIR", help="saved students to time too")
    p.add_argument(
        "--layouts",
        nargs="+",
        default=["default"],
        help="shared and tucker groupings: default (the model kind's) or <layer window>[:<private parts>], e.g. 2:down",
    )
    p.add_argument("--forms", nargs="+", default=["factored", "merged"], choices=["factored", "merged"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-batch", type=int, default=8)
    p.add_argument("--prefill-length", type=int, default=512)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per attempt")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per model per timing attempt")
    p.add_argument("--threads", type=int, help="torch threads (default: capped at the cores available)")
    p.add_argument("--quick", action="store_true", help="a tiny random Llama, short prompts: a smoke run")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child process of measure_memory
    p.add_argument("--memory-mode", default="eager", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = [] if args.students else ["lowrank", "shared", "tucker"]
    if args.quick:
        for name, value in (("prompt_tokens", 16), ("new_tokens", 8), ("prefill_batch", 2), ("prefill_length", 32)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


if __name__ == "__main__":
    arguments = parse()
    if arguments.memory_of:
        if arguments.threads:
            torch.set_num_threads(arguments.threads)
        print(json.dumps(memory_child(arguments.memory_of, arguments.memory_mode, arguments)))
    else:
        main(arguments)
