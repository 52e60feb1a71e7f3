"""The decomposition record: what `decompose` fitted and how well (`make_record`), as decomposition.json holds it."""

from __future__ import annotations

import torch

from ..decomposition.hooi import unfolding_energies
from ..decomposition.methods import Method
from ..decomposition.weighted import weighted_error


def make_record(model, method: Method, ops: str, head: str, result: dict, fit_seconds: float) -> dict:
    """The record of `factorize`'s `result` on the decomposed `model`: method and ranks, weights before
    and after, relative weight errors (overall, per slot, per layer and slot, per group), calibrated
    output errors when `result` holds the moments, the largest group's spectra, the seconds."""
    groups, ranks, layouts, found = result["groups"], result["ranks"], result["layouts"], result["found"]
    bank = model.base_model.tensorslim_factors
    num_layers = len({key.split(".", 1)[0] for key, _, _ in found})
    slots, sq_err, sq_norm, group_records, calibrated = [], {}, {}, {}, {}
    with torch.no_grad():
        recon = {n: bank.reconstruct(n) for n in groups}
        for name, (fit_record, W) in result["fits"].items():
            err = torch.linalg.matrix_norm(W - recon[name].to(W.device)).double().pow(2)
            norm = torch.linalg.matrix_norm(W).double().pow(2)
            sq_err[name], sq_norm[name] = err, norm
            group_records[name] = {
                "rows": groups[name].rows,
                "cols": groups[name].cols,
                "num_slices": groups[name].num_slices,
                "ranks": ranks[name],
                "relative_error": (err.sum() / norm.sum().clamp_min(1e-30)).sqrt().item(),
                "weights": {"teacher": W.numel(), "student": method.num_params(groups[name], ranks[name])},
                "solver": fit_record,
            }
            if result.get("moments"):
                moments = result["moments"][name].to(W.device)
                e, t = weighted_error(W, recon[name].to(W.device), moments), weighted_error(W, None, moments)
                calibrated[name] = (e, t)
                group_records[name]["calibrated_error"] = (e / max(t, 1e-30)) ** 0.5
    per_layer: dict[int, dict[str, float]] = {}
    slot_err: dict[str, list[float]] = {}
    for lay, (key, _, proj) in zip(layouts, found):
        layer = int(key.split(".", 1)[0])
        width = lay.out_features // len(proj.parts)
        for j, part in enumerate(proj.parts):
            blocks = [b for b in lay.blocks if j * width <= b.out_start < (j + 1) * width]
            for k, b in enumerate(blocks):
                slot = part if len(blocks) == 1 else f"{part}.{k}"
                if layer == 0:
                    slots.append(slot)
                e, n = sq_err[b.group][b.index].item(), sq_norm[b.group][b.index].item()
                per_layer.setdefault(layer, {})[slot] = (e / n) ** 0.5 if n else 0.0
                slot_err.setdefault(slot, [0.0, 0.0])
                slot_err[slot][0] += e
                slot_err[slot][1] += n
    total_e = sum(v.sum().item() for v in sq_err.values())
    total_n = sum(v.sum().item() for v in sq_norm.values())
    teacher_w = sum(g["weights"]["teacher"] for g in group_records.values())
    student_w = sum(g["weights"]["student"] for g in group_records.values())
    largest = max(groups, key=lambda n: groups[n].num_slices * groups[n].rows * groups[n].cols)
    first = ranks[largest]
    return {
        "method": method.name,
        "rank": first["rank"],
        "layer_rank": first.get("layer_rank"),
        "ops": ops,
        "head": head,
        "options": {k: v for k, v in method.values.items() if v is not None},
        "family": model.config.model_type,
        "num_layers": num_layers,
        "hidden_size": model.config.hidden_size,
        "num_slices": sum(g.num_slices for g in groups.values()),
        "slots": slots,
        "decomposed_weights": {"teacher": teacher_w, "student": student_w, "ratio": teacher_w / student_w},
        "relative_error": (total_e / total_n) ** 0.5 if total_n else 0.0,
        # sqrt(sum_i ||(W_i - W_hat_i) X_i||^2 / sum_i ||W_i X_i||^2) on the calibration data (undamped)
        "calibrated_error": relative(calibrated) if calibrated else None,
        "relative_error_per_slot": {s: (e / n) ** 0.5 if n else 0.0 for s, (e, n) in slot_err.items()},
        "relative_error_per_layer_slot": [[per_layer[i][s] for s in slots] for i in sorted(per_layer)],
        "groups": group_records,
        # HOOI methods: their solver options and the dtype the largest group's sweeps ran in
        "hooi": {
            "tol": method.tol,
            "max_iter": method.max_iter,
            "sweep_dtype": group_records[largest]["solver"]["sweep_dtype"],
        }
        if group_records[largest]["solver"]
        else None,
        "spectra": spectra(result["fits"][largest][1]),
        "seconds": {"fit": fit_seconds},
    }


def relative(errors: dict[str, tuple[float, float]]) -> float:
    """sqrt(sum of errors / sum of totals) over groups of (error, total) pairs."""
    return (sum(e for e, _ in errors.values()) / max(sum(t for _, t in errors.values()), 1e-30)) ** 0.5


def spectra(W: torch.Tensor) -> dict[str, list[float]]:
    """Singular values of the three unfoldings of W (slices, rows, columns), descending."""
    return {mode: e.sqrt().tolist() for mode, e in zip(("slices", "rows", "columns"), unfolding_energies(W))}
