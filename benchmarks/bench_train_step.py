"""Seconds per training step of decoder students against the dense model, side by side in one run:
SmolLM2-135M dense and a student of each method with `--levels` percent of the decoder-layer matrix
weights removed (made in memory, HOSVD only: speed does not depend on the fit).

A step is what healing (`distill general`) does per batch on the student's side: a forward of
`--batch` x `--seq-length` tokens with the language-model loss and the backward pass (the optimizer's
update, linear in the weights, left out: it would keep two more copies of every model's weights in
memory for a negligible share of the time). All models are timed in interleaved rounds
(benchmarks/common.timed), the dense model the baseline: seconds per step are medians over the
rounds (with their spread); a speed-up (the median per-round ratio to the dense step) is "not
measured" when the rounds were too noisy to trust it.

    python benchmarks/bench_train_step.py [--methods tucker shared svd lowrank] [--levels 30]
        [--batch 2] [--seq-length 256] [--rounds 5] [--attempts 3] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import logging

import torch
from transformers.utils.logging import disable_progress_bar

from bench_decode import teacher, weight_bytes
from tensorslim.compress.api import decompose

from common import emit, speedup_cell, timed, verdict

NAME = "train_step"


def step_call(model, batch: torch.Tensor):
    """A callable running the forward and backward pass of one training step of `model` on `batch`
    (gradients dropped after each: no model holds gradients or optimizer state between calls)."""
    model.train()

    def run() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["tucker", "shared", "svd", "lowrank"])
    parser.add_argument("--levels", nargs="+", type=int, default=[30], help="percent of the weights removed")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step (the healing benchmark's)")
    parser.add_argument("--seq-length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per attempt")
    parser.add_argument("--attempts", type=int, default=3, help="attempts when the rounds are too noisy")
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama (a smoke test of the script)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    disable_progress_bar()
    torch.manual_seed(0)

    dense = teacher(args.quick)
    batch = torch.randint(0, dense.config.vocab_size, (args.batch, args.seq_length))
    rows, results = [], []
    for level in args.levels:
        models = {"dense": dense}
        for method in args.methods:
            options = {} if method in ("lowrank", "svd") else {"max_iter": 0}
            models[method], _ = decompose(copy.deepcopy(dense), method, compression=level / 100, **options)
        calls = {name: step_call(m, batch) for name, m in models.items()}
        result = timed(calls, seconds=args.rounds, rounds=args.rounds, attempts=args.attempts)
        results.append(result)
        for name, model in models.items():
            timing = result.result.seconds[name]
            rows.append(
                {
                    "removed": "0%" if name == "dense" else f"{level}%",
                    "model": name,
                    "weights_MB": round(weight_bytes(model) / 2**20, 1),
                    "s_per_step": round(timing.median, 3),
                    "spread": round(timing.spread, 3),
                    "speedup_vs_dense": 1.0 if name == "dense" else speedup_cell(result, name),
                }
            )
    step = f"step: batch {args.batch} x {args.seq_length} tokens, loss + backward"
    emit(NAME, rows, f"{verdict(results)}; {step}")


if __name__ == "__main__":
    main()
