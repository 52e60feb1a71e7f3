"""Decoder compression before and after healing: WikiText-2 perplexity of SmolLM2-135M with 10-50% of
its decoder-layer matrix weights removed, per method (lowrank = per-matrix SVD, shared = a basis shared
across layers, tucker = the cross-layer bank), weight-only against data-aware (`--calibration`),
all on the same test tokens, plus the dense model.

    python benchmarks/bench_llm_compression.py [--levels 10 20 30 50] [--methods lowrank shared tucker]
        [--modes weights data] [--heal-steps N]

`--heal-steps N` heals every student with the same fixed budget, `distill general --corpus` (the
next-token KL to the dense model) on WikiText-103 validation packed into `--heal-seq-length` tokens,
N steps of `--heal-batch` sequences at `--heal-lr`, and scores it again ("healed" columns).
`--save-students DIR` also saves each student as fitted (before healing) to DIR/<row name>, a model
directory that `tensorslim evaluate` and `bench_decode.py --students` read.

Calibration reads WikiText-103's validation split (disjoint from the test split scored here) once;
`--cross` adds data-aware rows calibrated on Gutenberg books instead (does the fit overfit its
calibration data?). Rows are appended to results/llm_compression.json as they finish, and a rerun
skips the rows already there (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tensorslim.compress.api import decompose
from tensorslim.compress.calibration import calibrate, calibration_data
from tensorslim.compress.counts import count_parameters
from tensorslim.compress.fisher import output_fisher
from tensorslim.data.packaged_llm import cache_dir, smollm2_dir
from tensorslim.evaluate.perplexity import perplexity, read_text
from tensorslim.train.args import training_args
from tensorslim.train.general import distill_general
from tensorslim.train.recipes import GENERAL_TRAINING

from common import RESULTS, SHARED_DATA, emit

NAME = "llm_compression"
LAYOUT = ("layer_window", "sides", "private_parts", "weighting", "allocation")  # options that tell rows apart
VALID = SHARED_DATA / "corpus" / "wikitext_raw" / "wiki.valid.raw"  # calibration and healing, never scored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, nargs="+", default=[10, 20, 30, 50], help="%% of matrix weights removed")
    p.add_argument("--methods", nargs="+", default=["lowrank", "shared", "tucker"])
    p.add_argument("--modes", nargs="+", default=["weights", "data"], help="weights (weight-only), data (calibrated)")
    p.add_argument("--max-tokens", type=int, default=4096, help="WikiText-2 test tokens scored")
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--calibration-samples", type=int, default=64)
    p.add_argument("--calibration-seq-length", type=int, default=512)
    p.add_argument("--max-iter", type=int, default=8, help="sweeps of HOOI and of the data-aware refinement")
    p.add_argument("--cross", action="store_true", help="also calibrate on Gutenberg (tucker and lowrank at 20%%)")
    p.add_argument(
        "--layer-window",
        type=int,
        help="shared and tucker: share among this many layers (default: the model kind's for the level)",
    )
    p.add_argument("--sides", help="shared and tucker: the side policy (default: the model kind's)")
    p.add_argument("--private-parts", help="shared and tucker: parts grouped per layer, e.g. o,down, or none")
    p.add_argument(
        "--weighting",
        choices=("relative", "absolute", "fisher"),
        help="shared and tucker, data-aware: what the fit weighs (default: the model kind's, relative)",
    )
    p.add_argument(
        "--allocation",
        choices=("rank", "ratio", "error"),
        help="how the budget is spread over the groups (default: the model kind's, ratio)",
    )
    p.add_argument("--heal-steps", type=int, default=0, help="heal every student for this many steps (0: no)")
    p.add_argument("--heal-batch", type=int, default=2)
    p.add_argument("--heal-seq-length", type=int, default=256)
    p.add_argument("--heal-lr", type=float, default=3e-4)
    p.add_argument("--save-students", type=Path, metavar="DIR", help="save each student before healing under DIR")
    p.add_argument("--fresh", action="store_true", help="ignore earlier rows in the JSON")
    p.add_argument("--name", default=NAME, help="results/<name>.json (runs side by side write different files)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)

    out = RESULTS / f"{args.name}.json"
    rows = [] if args.fresh or not out.exists() else json.loads(out.read_text())["rows"]
    done = {(r["method"], r["removed_%"], r["calibration"], *(r.get(k) for k in LAYOUT)) for r in rows}
    directory = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    teacher = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    text = read_text(SHARED_DATA / "corpus" / "wikitext_raw" / "wiki.test.raw")

    def score(model) -> dict:
        return perplexity(model, tokenizer, text, seq_length=args.seq_length, max_tokens=args.max_tokens)

    def add(row: dict) -> None:
        rows.append(row)
        emit(
            args.name,
            rows,
            notes=f"SmolLM2-135M, WikiText-2 test, first {args.max_tokens} tokens in windows of "
            f"{args.seq_length}; calibration {args.calibration_samples} x {args.calibration_seq_length} tokens; "
            "ranks by ratio allocation (every group keeps the same share) unless a row's allocation says "
            "otherwise, shared bases fitted to relative output errors (the defaults for causal LMs)",
        )

    if ("dense", 0, "none", *(None for _ in LAYOUT)) not in done:
        result = score(teacher)
        add(
            {
                "method": "dense",
                "removed_%": 0,
                "calibration": "none",
                "matrix_weights": None,
                "parameters": count_parameters(teacher)["total"],
                "perplexity": result["perplexity"],
                "bits_per_byte": result["bits_per_byte"],
                "fit_s": 0.0,
            }
        )
    sources = {"weights": None} if "weights" in args.modes else {}
    if "data" in args.modes:
        sources["wikitext-valid"] = VALID
    if args.cross:
        sources["gutenberg"] = SHARED_DATA / "corpus" / "gutenberg"
    moments = {}
    plan = [(lvl, m, src) for lvl in args.levels for m in args.methods for src in sources]
    if args.cross:
        plan = [(lvl, m, src) for lvl, m, src in plan if src != "gutenberg" or (lvl == 20 and m != "shared")]
    for level, method, source in plan:
        label = "none" if source == "weights" else source
        options = {} if method in ("lowrank", "svd") else {"max_iter": args.max_iter}
        options.update(allocation=args.allocation)
        if method in ("shared", "tucker"):
            options.update(layer_window=args.layer_window, sides=args.sides, private_parts=args.private_parts)
            options.update(weighting=args.weighting)
        if (method, level, label, *(options.get(k) for k in LAYOUT)) in done:
            continue
        if source != "weights" and source not in moments:
            moments[source] = cached_moments(teacher, tokenizer, source, sources[source], args)
        student = copy.deepcopy(teacher)
        start = time.perf_counter()
        student, record = decompose(
            student, method, compression=level / 100, calibration=moments.get(source), **options
        )
        fit = time.perf_counter() - start
        result = score(student)
        if args.save_students:
            named = [method, f"{level}pct", label, *(str(options[k]) for k in LAYOUT if options.get(k) is not None)]
            saved = args.save_students / "-".join(named)
            student.save_pretrained(saved)
            tokenizer.save_pretrained(saved)
        healed = heal(student, directory, tokenizer, args, score) if args.heal_steps else {}
        add(
            {
                "method": method,
                "removed_%": level,
                "calibration": label,
                "matrix_weights": record["decomposed_weights"]["student"],
                "parameters": count_parameters(student)["total"],
                "rank": record["rank"],
                "layer_rank": record["layer_rank"],
                **{k: options.get(k) for k in LAYOUT},
                "weight_error": record["relative_error"],
                "calibrated_error": record["calibrated_error"],
                "perplexity": result["perplexity"],
                "bits_per_byte": result["bits_per_byte"],
                "fit_s": fit,
                **healed,
            }
        )
        del student
        gc.collect()


def cached_moments(teacher, tokenizer, source: str, path, args) -> tuple:
    """calibrate()'s (moments, record) of the teacher on `path`, with the Fisher weights when the
    fit weighs by them: one pass of the teacher per source (and one more for the Fisher), kept in
    the cache between runs of the benchmark."""
    size = f"{source}-{args.calibration_samples}x{args.calibration_seq_length}"
    data = calibration_data(
        teacher.config,
        path,
        tokenizer,
        samples=args.calibration_samples,
        seq_length=args.calibration_seq_length,
        seed=0,
    )
    cache = cache_dir() / f"moments-by-module-{size}.pt"
    if cache.exists():
        found = torch.load(cache, weights_only=False)
    else:
        found = calibrate(teacher, data, ops="all")
        torch.save(found, cache)
    if args.weighting == "fisher":
        cache = cache_dir() / f"fisher-by-module-{size}.pt"
        if not cache.exists():
            torch.save(output_fisher(teacher, data.batches, seed=0), cache)
        found[0].fisher = torch.load(cache, weights_only=False)
        found[1]["fisher"] = True
    return found


def heal(student, teacher_dir: Path, tokenizer, args, score) -> dict:
    """Heal a copy of `student` for `args.heal_steps` steps (distill general from the teacher's own
    directory on WikiText-103 validation, the student through a temporary directory) and `score` it."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student.save_pretrained(tmp / "student")
        tokenizer.save_pretrained(tmp / "student")
        settings = dict(
            max_steps=args.heal_steps,
            per_device_train_batch_size=args.heal_batch,
            learning_rate=args.heal_lr,
            save_strategy="no",
            disable_tqdm=True,
        )
        start = time.perf_counter()
        distill_general(
            teacher_dir,
            tmp / "student",
            None,
            tmp / "healed",
            training_args(tmp / "healed", GENERAL_TRAINING, **settings),
            corpus=[VALID],
            seq_length=args.heal_seq_length,
            max_train_samples=args.heal_steps * args.heal_batch,
        )
        seconds = time.perf_counter() - start
        result = score(AutoModelForCausalLM.from_pretrained(tmp / "healed", dtype=torch.float32).eval())
    return {
        "heal_steps": args.heal_steps,
        "heal_tokens": args.heal_steps * args.heal_batch * args.heal_seq_length,
        "healed_perplexity": result["perplexity"],
        "heal_s": seconds,
    }


if __name__ == "__main__":
    main()
