"""GGUF files: `convert_gguf` turns one into a transformers directory that scores as the original.

The GGUF is written here from a tiny random Llama the way llama.cpp's convert_hf_to_gguf.py writes
one (tensor names, Q and K rows permuted to GGML's rotary layout, a byte-level BPE vocabulary), so
the converted model must give the original's logits exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tensorslim.cli import main
from tensorslim.data.gguf import convert_gguf, gguf_in, is_gguf
from tensorslim.errors import TensorslimError
from tensorslim.evaluate.perplexity import perplexity, read_text
from tiny_models import tiny_model

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (make setup installs it)")

LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K permutation: each head's rotary halves interleaved (GGML's rotary layout)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_gguf(model, path):
    """`model` (a tied-embedding Llama) as llama.cpp writes it, in float32, with a byte-level vocabulary
    of single printable characters plus one merge."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    tokens = [chr(i) for i in range(33, 32 + config.vocab_size)] + ['!"']
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(['! "'])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(config.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{ours}.weight" for hf, ours in LAYER.items()})
    for hf, name in names.items():
        weight = state[hf]
        if hf.endswith("q_proj.weight"):
            weight = permute(weight, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            weight = permute(weight, config.num_key_value_heads)
        writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_converted_gguf_gives_the_original_logits_and_scores_with_evaluate(tmp_path):
    original = tiny_model("llama", "causal_lm")
    source = write_gguf(original, tmp_path / "tiny.Q8.gguf")
    assert is_gguf(source) and gguf_in(tmp_path) == source and gguf_in(tmp_path / "nothing") is None
    out = convert_gguf(source, tmp_path / "converted")
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, original.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-5)

    # the converted directory is an ordinary model directory: evaluate --perplexity scores it
    tokenizer = AutoTokenizer.from_pretrained(out)
    text_file = tmp_path / "text.txt"
    text_file.write_text("".join(chr(33 + (7 * i) % 90) for i in range(200)) + "\n")
    assert main(["evaluate", "--model", str(out), "--perplexity", str(text_file), "--seq-length", "16"]) == 0
    written = json.loads((out / "perplexity_results.json").read_text())
    expected = perplexity(original, tokenizer, read_text(text_file), seq_length=16)
    assert written["windows"] == expected["windows"] >= 10
    assert written["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)


def test_convert_gguf_refuses_what_is_not_gguf(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(TensorslimError, match="is not a GGUF file"):
        convert_gguf(tmp_path / "model.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()
