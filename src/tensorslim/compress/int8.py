"""Dynamic int8 for CPU serving, on top of a decomposed (or any) float model, with torch's own
`torch.ao.quantization.quantize_dynamic`: every nn.Linear gets int8 weights (one scale per output
channel) and quantises its input on each call (one scale per tensor); every embedding table (word,
position, token type) gets int8 rows (one scale and offset per row, torch's weight-only quantised
nn.Embedding), except one an output layer is tied to: then both stay float32, as do norms and biases.
docs/quantization.md says why.

A `FactoredProjection` is not an nn.Linear, so `quantize` first writes each one as two nn.Linear
stages, the input side and the rest (`ChainedProjection`), and then quantises every nn.Linear of the
model in one call. With A, M_j, B as in `factored` (x: (..., in) in g_in tiles, G_j = M_j B):

    shared, tucker:  fan-out  x -> x A -> [G_1 | ... | G_g] + bias
                     fan-in   x_j A on each tile j -> vstack(G_j) + bias
    lowrank:         fan-out  x -> [A_1 | ... | A_g] -> G_j on tile j
                     fan-in   A_j on tile j -> vstack(G_j)

The shared A of a group is one nn.Linear in a `SideBank` on the base model, stored and quantised
once, and x A is computed once per forward for the projections reading the same x (q, k, v). Each
stage quantises its input, so the middles are not a stage of their own: their outputs, sums of a few
large and many small components, would lose the small ones to one scale per tensor
(docs/quantization.md). A projection whose own stages would hold at least as many weights as its
dense matrix (a full input rank) is merged into an nn.Linear instead.

The model is saved as a state dict (quantised tensors: torch.save; safetensors cannot hold them)
beside config.json, whose `tensorslim_int8` entry marks it and keeps the decomposition section the
structure is rebuilt from (`load_int8`).
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..errors import TensorslimError
from .embeddings import FactoredEmbedding, FactoredHead
from .factored import FactoredProjection, LatestProduct
from .inplace import apply_structure, detach_bank, is_decomposed
from .loading import HEADS, check_head, infer_head, load_config
from .section import INT8, SECTION, DecompositionConfig, int8_entry, section_of

SIDES = "tensorslim_sides"  # the SideBank on the base model
WEIGHTS = "model_int8.pt"
SCHEME = "torch dynamic int8: qint8 weights per output channel, quint8 inputs per tensor on each call"


@contextlib.contextmanager
def quiet_deprecation():
    """torch marks torch.ao.quantization and quantised tensors deprecated (for torchao) while they
    still run; keep those warnings out of every command's output (docs/quantization.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        yield


def linear(W: torch.Tensor) -> nn.Linear:
    """An nn.Linear (no bias) computing x @ W for W [in, out]."""
    layer = nn.Linear(*W.shape, bias=False, device=W.device, dtype=W.dtype)
    layer.weight.data = W.T.contiguous()
    return layer


def tiled(linears: Sequence[nn.Module], x: torch.Tensor, tiles: int) -> torch.Tensor:
    """x (..., tiles * k) -> (..., tiles * m): `linears[0]` on every tile, or `linears[j]` on tile j."""
    if tiles == 1:
        return linears[0](x)
    if len(linears) == 1:
        return linears[0](x.unflatten(-1, (tiles, -1))).flatten(-2)
    return torch.cat([f(t) for f, t in zip(linears, x.chunk(tiles, -1))], -1)


class SideBank(nn.Module):
    """The input sides (x A) groups' projections share, one nn.Linear each, stored once; x A is
    computed once per forward of the base model for the projections that read the same x."""

    def __init__(self):
        super().__init__()
        self.linears = nn.ModuleDict()
        self._latest = LatestProduct()

    def add(self, key: str, W: torch.Tensor) -> None:
        if key not in self.linears:
            self.linears[key] = linear(W)

    def apply(self, key: str, x: torch.Tensor, tiles: int) -> torch.Tensor:
        return self._latest.get(key, x, lambda x: tiled([self.linears[key]], x, tiles))

    def clear(self, *_) -> None:  # hooked around every forward of the base model
        self._latest.clear()


class ChainedProjection(nn.Module):
    """A FactoredProjection as linear stages, each on `tiles` equal tiles of its input: an input side
    of the bank (by key) or the module's own nn.Linear(s); then the bias (see the module docstring)."""

    def __init__(self, stages: list[tuple[int, str | list[nn.Linear]]], bias: torch.Tensor | None, sides: SideBank):
        super().__init__()
        self.tiles = tuple(tiles for tiles, _ in stages)
        self.side_keys = tuple(s if isinstance(s, str) else None for _, s in stages)
        self.stages = nn.ModuleList(nn.ModuleList([] if isinstance(s, str) else s) for _, s in stages)
        object.__setattr__(self, "sides", sides)  # read at call time, not a submodule: stored once
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for tiles, key, own in zip(self.tiles, self.side_keys, self.stages):
            x = self.sides.apply(key, x, tiles) if key else tiled(own, x, tiles)
        return x if self.bias is None else x + self.bias


def merged(module: FactoredProjection | Conv1D) -> nn.Linear:
    """The nn.Linear of a factored projection's current dense matrix, or of a Conv1D."""
    W = module.dense_weight() if isinstance(module, FactoredProjection) else module.weight
    layer = linear(W)
    if module.bias is not None:
        layer.bias = nn.Parameter(module.bias.detach().clone())
    return layer


def chain(module: FactoredProjection, sides: SideBank) -> nn.Module:
    """`module` as a ChainedProjection (a shared input side added to `sides`), or merged where its
    own stages would hold at least as many weights as its dense matrix."""
    bank, lay, g = module.bank, module.layout, module.g
    if bank.method.shared:
        A, B = bank.sides(lay.group, lay.transposed)  # (block_in, r_in), (r_out, block_out)
        G = module.through_middles(B)  # (g, r_in, block_out)
        if A.shape[1] >= A.shape[0]:
            return merged(module)
        key = f"{lay.group}_{'t' if lay.transposed else 'n'}"
        sides.add(key, A)
        if module.fan_in:
            return ChainedProjection([(g, key), (1, [linear(G.reshape(-1, G.shape[-1]))])], module.bias, sides)
        rest = linear(G.transpose(0, 1).reshape(G.shape[1], -1))
        return ChainedProjection([(1, key), (1, [rest])], module.bias, sides)
    A, B = bank.sides(lay.group, lay.transposed, module.slices)
    G = module.through_middles(B)  # A (g, block_in, r), G (g, r, block_out)
    if A.numel() + G.numel() >= module.in_features * module.out_features:
        return merged(module)
    if module.fan_in:
        stages = [(g, [linear(a) for a in A]), (1, [linear(G.reshape(-1, G.shape[-1]))])]
    else:
        stages = [(1, [linear(A.transpose(0, 1).reshape(A.shape[1], -1))]), (g, [linear(b) for b in G])]
    return ChainedProjection(stages, module.bias, sides)


class ChainedEmbedding(nn.Module):
    """A FactoredEmbedding as an nn.Embedding of `low` (V, r) then an nn.Linear computing @ up (r, D):
    the stages `quantize` makes int8 (rows of the table, the linear per output channel)."""

    def __init__(self, embedding: FactoredEmbedding):
        super().__init__()
        self.table = nn.Embedding(
            embedding.num_embeddings, embedding.rank, embedding.padding_idx, _weight=embedding.low.detach().clone()
        )
        self.up = linear(embedding.up.detach())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.up(self.table(ids))


def check_float(config, path: str | Path | None = None) -> None:
    """Refuse a model that is already quantised: int8 from tensorslim, or any other quantisation method."""
    what = f"{path}" if path is not None else "the model"
    if int8_entry(config) is not None:
        raise TensorslimError(
            f"{what} is already quantised to int8 (tensorslim export --format int8 wrote it)",
            "pass the float model it was made from (its export.json names it)",
        )
    q = getattr(config, "quantization_config", None)
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    if q is not None and str(getattr(method, "value", method)) != SECTION:
        raise TensorslimError(
            f"{what} is already quantised (quant_method {getattr(method, 'value', method)!r})",
            "pass the float (unquantised) checkpoint",
        )


@torch.no_grad()
def quantize(model: PreTrainedModel) -> PreTrainedModel:
    """`model` (float32, a student or a dense model) in dynamic int8, changed in place and returned:
    factored projections chained and the bank removed, Conv1D as nn.Linear, factored word
    embeddings as a table and a linear stage, then every nn.Linear but an output layer tied to the
    input embeddings quantised (per_channel_dynamic_qconfig) and every embedding table but one a
    head is tied to, per row (float_qparams_weight_only_qconfig)."""
    check_float(model.config)
    section = section_of(model.config)
    convert(model)
    setattr(model.config, INT8, {"scheme": SCHEME, "decomposition": section.to_dict() if section else None})
    return model.eval()


def convert(model: PreTrainedModel) -> None:
    """The conversion of `quantize`, also run on the skeleton `load_int8` loads into."""
    if is_decomposed(model):
        base, sides = model.base_model, SideBank()
        for name, module in list(model.named_modules()):
            if isinstance(module, FactoredProjection):
                model.set_submodule(name, chain(module, sides))
        detach_bank(model)
        if len(sides.linears):
            base.add_module(SIDES, sides)
            base.register_forward_pre_hook(sides.clear)
            base.register_forward_hook(sides.clear)
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            model.set_submodule(name, merged(module))
    word = model.get_input_embeddings()
    if isinstance(word, FactoredEmbedding) and not isinstance(model.get_output_embeddings(), FactoredHead):
        word = ChainedEmbedding(word)
        model.set_input_embeddings(word)
    tied = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    spec = {
        name: per_channel_dynamic_qconfig
        for name, m in model.named_modules()
        if type(m) is nn.Linear and m.weight.data_ptr() not in tied
    }
    head_weight = getattr(model.get_output_embeddings(), "weight", None)
    spec.update(
        {
            name: float_qparams_weight_only_qconfig
            for name, m in model.named_modules()
            if type(m) is nn.Embedding and m.weight is not head_weight
        }
    )
    with quiet_deprecation():
        quantize_dynamic(model, spec, inplace=True)
    for m in model.modules():
        if isinstance(m, QuantizedEmbedding):  # its kernel refuses views (position / token-type ids are)
            m.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))


def save_int8(model: PreTrainedModel, out: str | Path) -> None:
    """model_int8.pt (the state dict) and config.json (with the int8 entry) of a quantised model in `out`."""
    if int8_entry(model.config) is None:
        raise ValueError("save_int8 takes a model quantize() returned")
    model.config.architectures = [type(model).__name__]
    with quiet_deprecation():
        torch.save(model.state_dict(), Path(out) / WEIGHTS)
    model.config.save_pretrained(out)


def load_int8(path: str | Path, head: str = "auto", config=None) -> PreTrainedModel:
    """The int8 model saved in `path` (by `save_int8`): its class built from config.json, the
    decomposed structure and the conversion redone on zero factors, then its state dict loaded."""
    config = config or load_config(path)
    entry = int8_entry(config)
    if entry is None:
        raise TensorslimError(f"{path} is not an int8 model", f"tensorslim export --model {path} --format int8")
    saved = infer_head(config)
    if head not in ("auto", saved):
        raise TensorslimError(f"{path} is an int8 model with the {saved} head", f"load it with head {saved!r}")
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise TensorslimError(f"{path} has no {WEIGHTS}", "export the int8 model again")
    model = HEADS[check_head(saved)].from_config(config)
    if entry.get("decomposition"):
        bank = apply_structure(model, DecompositionConfig.from_dict(entry["decomposition"]))
        for param in bank.parameters():
            param.data = torch.zeros_like(param)
    with torch.no_grad():
        convert(model)
    try:
        with quiet_deprecation():
            model.load_state_dict(torch.load(file, weights_only=True))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise TensorslimError(
            f"cannot load the int8 weights in {file}: {str(exc).splitlines()[0]}",
            "the file is truncated or does not match config.json; export the int8 model again",
        ) from exc
    return model.eval()
