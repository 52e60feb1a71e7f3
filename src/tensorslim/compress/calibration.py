"""Input second moments of the decomposed projections on calibration data, and their slices.

`input_moments` streams the dense teacher once over calibration batches (`data.calibration`) and
records, for every target module, the uncentered second moment of its input rows over the real
tokens: Sigma = (1 / N) sum_t x_t x_t^T, (in_features, in_features) float64, padded positions
excluded. Projections of a layer that read the same input (the family's `reads`: q/k/v, Llama's
gate/up) share one accumulation and one tensor. `slice_covariances` cuts these moments to the
input range of every slice of a group (`decomposition.slices`), the form the data-aware solvers take.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..data.calibration import calibration_batches, model_inputs
from ..decomposition.slice_weights import SliceWeights
from ..decomposition.slices import ModuleLayout
from ..errors import TensorslimError
from ..families import get_family
from .fisher import output_fisher
from .inplace import in_out, targets

log = logging.getLogger(__name__)


@dataclass
class Moments:
    """by_module: key "<layer>.<path>" -> (in, in) float64 second moment (keys reading the same
    input hold the same tensor); tokens: real tokens streamed; bytes: memory of the distinct moments."""

    by_module: dict[str, torch.Tensor]
    tokens: int
    seconds: float
    bytes: int
    fisher: dict[str, torch.Tensor] | None = None  # key -> (out,) diagonal Fisher (compress.fisher)


class _Accumulator:
    """Forward-pre hook summing x^T x over the real rows of a module's input (B, T, in)."""

    def __init__(self, width: int, device: torch.device, real: dict):
        self.sum = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.count = 0
        self.real = real  # {"mask": (B*T,) bool of the current batch, "tokens": its real count}

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        if x.shape[0] == self.real["mask"].numel():
            x = x[self.real["mask"]]
        elif x.shape[0] != self.real["tokens"]:  # neither padded (B*T rows) nor unpadded (real rows)
            raise TensorslimError(
                f"a projection input of {x.shape[0]} rows in a batch of {self.real['mask'].numel()} positions",
                "this model's forward does not match its family's table entry",
            )
        x = x.float()
        self.sum += (x.T @ x).to(self.sum)
        self.count += x.shape[0]


def input_moments(
    model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], ops: str = "all", device=None
) -> Moments:
    """Second moments of the inputs of every module `ops` decomposes (see the module docstring).

    `batches` hold input_ids and attention_mask (and token_type_ids, passed when the model takes
    them), as `data.calibration.calibration_batches` makes them. The model runs in eval mode on
    `device` (default: where its weights are; it is moved there); moments are accumulated there
    (on the CPU for devices without float64).
    """
    start = time.perf_counter()
    found = targets(model, ops)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    width = max(in_out(module)[0] for _, module, _ in found)
    if tokens < width:
        raise TensorslimError(
            f"{tokens} calibration tokens, fewer than the input width {width}: the moment matrix is singular",
            "pass more --calibration-samples or longer sequences",
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    store = device if device.type == "cuda" else torch.device("cpu")
    real: dict = {}
    accumulators: dict[str, _Accumulator] = {}
    by_key: dict[str, _Accumulator] = {}
    handles = []
    for key, module, proj in found:
        shared = f"{key.partition('.')[0]}.reads={proj.reads}" if proj.reads else key
        if shared not in accumulators:
            accumulators[shared] = _Accumulator(in_out(module)[0], store, real)
            handles.append(module.register_forward_pre_hook(accumulators[shared]))
        by_key[key] = accumulators[shared]
    was_training = model.training
    model.eval().to(device)
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibration", unit="batch", leave=False):
                inputs = model_inputs(model, batch, device)
                mask = inputs["attention_mask"].reshape(-1).bool()
                real.update(mask=mask, tokens=int(mask.sum()))
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for shared, acc in accumulators.items():
        if acc.count != tokens:
            raise TensorslimError(
                f"projection {shared} saw {acc.count} of the {tokens} calibration tokens",
                "this model's forward does not match its family's table entry",
            )
        acc.sum /= tokens
    moments = Moments(
        by_module={key: acc.sum for key, acc in by_key.items()},
        tokens=tokens,
        seconds=time.perf_counter() - start,
        bytes=sum(acc.sum.nbytes for acc in accumulators.values()),
    )
    log.info(
        "input moments of %d modules (%d distinct) over %d tokens: %.1f MB, %.1f s",
        len(by_key),
        len(accumulators),
        tokens,
        moments.bytes / 1e6,
        moments.seconds,
    )
    return moments


def slice_covariances(moments: Moments, layouts: list[ModuleLayout]) -> dict[str, SliceWeights]:
    """{group: SliceWeights}: each slice's block in_start:in_start+in_size of its module's moment,
    on the rows side for [in, out] slices and the columns side for [out, in] ones; with Fisher
    weights in `moments`, each slice's phi too: the mean of its module's diagonal Fisher over the
    slice's outputs (compress.fisher)."""
    sides: dict[str, tuple[list, list]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for lay in layouts:
        moment = moments.by_module[lay.key]
        for b in lay.blocks:
            block = moment[b.in_start : b.in_start + b.in_size, b.in_start : b.in_start + b.in_size]
            phi = None if moments.fisher is None else moments.fisher[lay.key][b.out_start : b.out_start + b.out_size]
            sides.setdefault(b.group, ([], []))[b.transposed].append((b.index, block, phi))
            shapes[b.group] = (b.out_size, b.in_size) if b.transposed else (b.in_size, b.out_size)
    weights = {}
    for group, (rows, cols) in sides.items():
        R, C = shapes[group]
        (ri, rc, rf), (ci, cc, cf) = (_stack(rows, R), _stack(cols, C))
        weights[group] = SliceWeights(ri, rc, ci, cc, rf, cf)
    return weights


def _stack(blocks: list[tuple], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(index (n,) long sorted, (n, size, size) float64, (n,) float64 Fisher weights or None) of
    (slice index, block, its outputs' diagonal Fisher or None) triples."""
    blocks = sorted(blocks, key=lambda triple: triple[0])
    index = torch.tensor([i for i, _, _ in blocks], dtype=torch.long)
    if not blocks:
        return index, torch.zeros(0, size, size, dtype=torch.float64), None
    fisher = None if blocks[0][2] is None else torch.stack([phi.mean() for _, _, phi in blocks])
    return index, torch.stack([block for _, block, _ in blocks]), fisher


DEFAULT_SAMPLES = 256
DEFAULT_SEQ_LENGTH = 256
DEFAULT_DAMPING = 0.01  # ridge relative to the mean diagonal, as GPTQ's damping


@dataclass
class CalibrationData:
    """Calibration sequences read for one model (`calibration_data`), not yet streamed."""

    source: str
    batches: list[dict[str, torch.Tensor]]
    seq_length: int
    seed: int


def calibration_data(config, data, tokenizer, *, samples: int, seq_length: int | None, seed: int) -> CalibrationData:
    """Calibration `data` read for a `config` model (`data.calibration`), the sequence length capped
    at the model's context; refuses bad data before any weight is loaded."""
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    seq_length = min(seq_length or DEFAULT_SEQ_LENGTH, context or DEFAULT_SEQ_LENGTH)
    causal = get_family(config).causal
    batches = calibration_batches(data, tokenizer, samples=samples, seq_length=seq_length, seed=seed, causal=causal)
    return CalibrationData(str(data), batches, seq_length, seed)


def calibrate(model: PreTrainedModel, data: CalibrationData, *, ops: str, fisher: bool = False) -> tuple[Moments, dict]:
    """The input moments of `model`'s projections streamed over `data` (`input_moments`; cut into
    each group's slices by `slice_covariances` once the grouping is known), with `fisher` also their
    outputs' diagonal Fisher (`compress.fisher`, one more pass with gradients), and a record of the run."""
    moments = input_moments(model, data.batches, ops)
    if fisher:
        start = time.perf_counter()
        moments.fisher = output_fisher(model, data.batches, ops, seed=data.seed)
        moments.seconds += time.perf_counter() - start
    record = {
        "data": data.source,
        "sequences": sum(len(b["input_ids"]) for b in data.batches),
        "seq_length": data.seq_length,
        "tokens": moments.tokens,
        "seed": data.seed,
        "seconds": moments.seconds,
        "moment_bytes": moments.bytes,
        "fisher": fisher,
    }
    return moments, record
