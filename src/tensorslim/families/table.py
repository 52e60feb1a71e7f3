"""The supported families, one entry each. Adding a family is one entry here plus its tests."""

from __future__ import annotations

from .spec import Family, Projection

A, F = "attention", "ffn"

BERT_LAYER = (
    Projection("attention.self.query", ("q",), A, reads="x"),
    Projection("attention.self.key", ("k",), A, reads="x"),
    Projection("attention.self.value", ("v",), A, reads="x"),
    Projection("attention.output.dense", ("o",), A),
    Projection("intermediate.dense", ("ffn_in",), F, transposed=True),
    Projection("output.dense", ("ffn_out",), F),
)

LLAMA_LAYER = (
    Projection("self_attn.q_proj", ("q",), A, reads="x"),
    Projection("self_attn.k_proj", ("k",), A, reads="x"),
    Projection("self_attn.v_proj", ("v",), A, reads="x"),
    Projection("self_attn.o_proj", ("o",), A),
    Projection("mlp.gate_proj", ("gate",), F, transposed=True, reads="h"),
    Projection("mlp.up_proj", ("up",), F, transposed=True, reads="h"),
    Projection("mlp.down_proj", ("down",), F),
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        "encoder.layer",
        BERT_LAYER,
        notes="post-LN encoders with BERT's module layout",
    ),
    Family(
        "distilbert",
        ("distilbert",),
        "transformer.layer",
        (
            Projection("attention.q_lin", ("q",), A, reads="x"),
            Projection("attention.k_lin", ("k",), A, reads="x"),
            Projection("attention.v_lin", ("v",), A, reads="x"),
            Projection("attention.out_lin", ("o",), A),
            Projection("ffn.lin1", ("ffn_in",), F, transposed=True),
            Projection("ffn.lin2", ("ffn_out",), F),
        ),
    ),
    Family(
        "modernbert",
        ("modernbert",),
        "layers",
        (
            Projection("attn.Wqkv", ("q", "k", "v"), A),
            Projection("attn.Wo", ("o",), A),
            Projection("mlp.Wi", ("ffn_in", "gate"), F, transposed=True),
            Projection("mlp.Wo", ("ffn_out",), F),
        ),
        notes="rotary, gated FFN fused in Wi",
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "h",
        (
            Projection("attn.c_attn", ("q", "k", "v"), A, conv1d=True),
            Projection("attn.c_proj", ("o",), A, conv1d=True),
            Projection("mlp.c_fc", ("ffn_in",), F, transposed=True, conv1d=True),
            Projection("mlp.c_proj", ("ffn_out",), F, conv1d=True),
        ),
        causal=True,
        notes="Conv1D weights [in, out]; fused c_attn",
    ),
    Family(
        "llama",
        ("llama", "qwen2", "qwen3", "mistral"),
        "layers",
        LLAMA_LAYER,
        causal=True,
        notes="rotary, grouped-query K/V, gated FFN (SmolLM2 is Llama)",
    ),
)

BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
