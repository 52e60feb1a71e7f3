"""merge_where_faster: the projections whose dense matrix takes no more multiply-adds per token than
their factored forward go back to dense modules, the others stay factored; outputs are unchanged, the
choice is recorded in config.json and survives save_pretrained / from_pretrained, counts follow it.
And the forward those counts describe is the one that runs: a lowrank projection reads its factors in
place (no copy per call), and a decode step through the KV cache does exactly the counted work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from tensorslim.compress.api import decompose, merge_where_faster
from tensorslim.compress.counts import count_parameters, flops_per_token, matrix_weights
from tensorslim.compress.factored import FactoredProjection
from tensorslim.compress.inplace import bank_of, is_decomposed, merge, targets
from tensorslim.errors import TensorslimError
from tiny_models import tiny_inputs, tiny_model

# the tiny Llama: hidden 32, K/V 16 wide, FFN 80, 2 layers; groups 32x32 (q, o), 32x16 (k, v), 80x32 (FFN)
PATHS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")
PATHS += ("mlp.up_proj", "mlp.down_proj")


def student(method: str, **options):
    return decompose(tiny_model("llama", "causal_lm"), method, **options)[0]


def keys(paths) -> list[str]:
    return [f"{layer}.{path}" for layer in range(2) for path in PATHS if path in paths]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs()).logits


# Multiply-adds per token by hand (r: a group's rank; x A shared by k, v and by gate, up):
# lowrank rank 20: q, o 20 (32 + 32) = 1280 >= 32 x 32 = 1024: dense; k, v 10 (32 + 16) = 480 < 512;
#   gate, up, down 20 (80 + 32) = 2240 < 2560. Per layer 2 x 1280 + 2 x 480 + 3 x 2240 = 10240 before,
#   2 x 1024 + 2 x 480 + 3 x 2240 = 9728 after.
# shared rank 24 (sides scale with their size): q, o 32 x 24 + 24 x 32 = 1536 >= 1024: dense; k, v: rank 12
#   on the 16 side, 24 on the 32 (input) side: k + v 32 x 24 + 2 x 24 x 16 = 1536 >= 1024: dense; gate + up
#   (input side 32 at 24, 80 side at 60) 32 x 24 + 2 x 24 x 80 = 4608 < 5120 (each alone 2688 >= 2560);
#   down (input side 80 at 60) 80 x 60 + 60 x 32 = 6720 >= 2560: dense. Per layer 3072 + 1536 + 4608 + 6720
#   = 15936 before, 2048 + 1024 + 4608 + 2560 = 10240 after.
# tucker at full rank: every x A costs as much as a dense matrix, so everything goes dense.
CASES = [
    ("lowrank", {"rank": 20}, ("self_attn.q_proj", "self_attn.o_proj"), 2 * 10240, 2 * 9728),
    ("shared", {"rank": 24}, [p for p in PATHS if p not in ("mlp.gate_proj", "mlp.up_proj")], 2 * 15936, 2 * 10240),
    ("tucker", {"rank": 32, "layer_rank": 3}, PATHS, None, 2 * (2 * 1024 + 2 * 512 + 3 * 2560)),
]


@pytest.mark.parametrize("method,options,dense,macs_before,macs_after", CASES)
def test_the_projections_merged_are_those_whose_dense_matrix_does_no_more_work(
    method, options, dense, macs_before, macs_after
):
    model = student(method, **options)
    before = logits(model)
    record = merge_where_faster(model)
    assert record["merged"] == keys(dense)
    assert record["factored"] == 14 - len(keys(dense))
    if macs_before is not None:
        assert record["macs_per_token"] == {"before": macs_before, "after": macs_after}
    assert flops_per_token(model, 0) == 2 * macs_after
    for key, module, _ in targets(model, "all"):
        assert isinstance(module, nn.Linear if key in record["merged"] else FactoredProjection), key
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)
    if is_decomposed(model):
        assert merge_where_faster(model)["merged"] == []  # nothing left to merge


def test_the_factors_no_module_reads_are_dropped_and_the_counts_follow():
    """lowrank rank 20: q and o (the whole 32x32 group) go dense, so the group's factors go."""
    model = student("lowrank", rank=20)
    record = merge_where_faster(model)
    assert set(bank_of(model).groups) == {"32x16", "80x32"}
    # factors: 32x16 group 4 x (32 x 10 + 10 x 10 + 10 x 16), 80x32 group 6 x (80 x 20 + 20 x 20 + 20 x 32);
    # dense q and o: 4 x 32 x 32
    expected = 4 * 580 + 6 * 2640 + 4 * 1024
    assert matrix_weights(model) == expected == record["matrix_weights"]["after"]
    assert record["matrix_weights"]["before"] == expected - 4 * 1024 + 4 * (32 * 20 + 20 * 20 + 20 * 32)
    parts = count_parameters(model)
    assert parts["encoder_factors"] == 4 * 580 + 6 * 2640
    assert model.config.quantization_config.merged == keys(("self_attn.q_proj", "self_attn.o_proj"))


def test_the_choice_survives_save_pretrained_and_from_pretrained(tmp_path):
    model = student("shared", rank=24, layer_window=0)  # the paper's groups: 32x32, 32x16, 80x32
    merge_where_faster(model)
    before = logits(model)
    model.save_pretrained(tmp_path)
    section = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    dense = keys([p for p in PATHS if p not in ("mlp.gate_proj", "mlp.up_proj")])
    assert section["merged"] == dense
    stored = set(safe_open(tmp_path / "model.safetensors", "pt").keys())
    assert "model.layers.1.mlp.down_proj.weight" in stored and "model.layers.1.mlp.up_proj.weight" not in stored
    assert not [k for k in stored if ".groups.32x32." in k or ".groups.32x16." in k]  # read by merged ones only
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for key, module, _ in targets(loaded, "all"):
        assert isinstance(module, nn.Linear if key in dense else FactoredProjection), key
    assert set(bank_of(loaded).groups) == {"80x32"}
    torch.testing.assert_close(logits(loaded), before, atol=0, rtol=0)
    assert count_parameters(loaded) == count_parameters(model)
    assert flops_per_token(loaded, 16) == flops_per_token(model, 16)
    assert merge_where_faster(loaded)["merged"] == []  # nothing left to merge


def test_merging_everything_leaves_an_ordinary_dense_model(tmp_path):
    model = student("tucker", rank=32, layer_rank=3)
    before = logits(model)
    merge_where_faster(model)
    assert not is_decomposed(model) and not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path).eval()), before, atol=1e-5, rtol=0)


def test_bad_merges_are_refused(tmp_path):
    model = student("lowrank", rank=20)
    with pytest.raises(TensorslimError, match="not factored projections of this model: 0.nope"):
        merge(model, ["0.self_attn.q_proj", "0.nope"])
    assert isinstance(model.model.layers[0].self_attn.q_proj, FactoredProjection)  # nothing changed
    with pytest.raises(TensorslimError, match="not decomposed"):
        merge_where_faster(tiny_model("llama", "causal_lm"))
    merge_where_faster(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["merged"].append("5.self_attn.q_proj")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TensorslimError, match="merged projections this model does not have: 5.self_attn.q_proj"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


class Ops(TorchDispatchMode):
    """The aten ops called, with the shapes of their outputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append(
            (str(func.overloadpacket.__name__), tuple(out.shape) if isinstance(out, torch.Tensor) else None)
        )
        return out


@pytest.mark.parametrize("path,rank", [("self_attn.q_proj", 12), ("mlp.gate_proj", 12), ("self_attn.k_proj", 6)])
def test_a_lowrank_projection_reads_its_factors_in_place(path, rank):
    """Once the products are cached (no grad), a projection's forward computes x A and one more
    product, reading its slice of U and V as views: no gather or copy of the factors per call."""
    model = student("lowrank", rank=12)
    module = model.model.layers[1].get_submodule(path)
    x = torch.randn(5, module.in_features)
    with torch.no_grad():
        expected = x @ module.dense_weight()
        module.bank.begin_forward(model.model)
        module(x)  # builds the cached product
        with Ops() as ops:
            y = module(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    products = [shape for name, shape in ops.calls if name in ("mm", "addmm", "bmm", "matmul")]
    assert products == [(5, rank), (5, module.out_features)]
    assert not [name for name, _ in ops.calls if name in ("index", "clone", "copy_", "contiguous", "index_select")]


def step_flops(model) -> int:
    """FLOPs of one decode step after an 8-token prompt (KV cache, no grad, caches warm)."""
    ids = tiny_inputs(1, 9, pad=False)["input_ids"]
    with torch.no_grad():
        cache = model(input_ids=ids[:, :8], use_cache=True).cache
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids[:, 8:], cache=cache, use_cache=True)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "method,options",
    [
        ("lowrank", {"rank": 12}),
        ("shared", {"rank": 12}),
        ("tucker", {"rank": 12, "layer_rank": 2}),
        ("shared", {"rank": 4, "layer_window": 1, "sides": "output-full"}),
    ],
)
def test_a_decode_step_does_the_projection_work_the_counts_say(method, options):
    """Through the KV cache at batch 1, a student's step differs from the dense model's by exactly the
    projections' FLOPs per token of the counts: no product of factors is rebuilt per step."""
    dense = tiny_model("llama", "causal_lm")
    model = student(method, **options)
    assert step_flops(model) - step_flops(dense) == flops_per_token(model, 0) - flops_per_token(dense, 0) < 0
