"""Tiny random models of every supported family (configs small enough for CPU tests)."""

from __future__ import annotations

import torch
from transformers import AutoConfig

VOCAB = 96

#: family member -> config kwargs (hidden 32, 2 layers, 4 heads); decoders with grouped-query K/V
#: and FFN sizes that do not tile where the family has them
TINY = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, pad_token_id=1),
    "xlm-roberta": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, pad_token_id=1
    ),
    "camembert": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, pad_token_id=1
    ),
    "electra": dict(
        embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    ),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=128),
    "modernbert": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        global_attn_every_n_layers=2,
        local_attention=8,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=80,
        tie_word_embeddings=True,
    ),
    "qwen2": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=80
    ),
    "qwen3": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=80,
        head_dim=8,
    ),
    "mistral": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=80
    ),
}
DECODERS = ("gpt2", "llama", "qwen2", "qwen3", "mistral")
ENCODERS = tuple(t for t in TINY if t not in DECODERS)


def tiny_config(model_type: str, **overrides):
    kwargs = {"vocab_size": VOCAB, "max_position_embeddings": 64, **TINY[model_type], **overrides}
    if model_type == "gpt2":
        kwargs.pop("max_position_embeddings")
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, head: str = "base", seed: int = 0, **overrides):
    """A random tiny model of `model_type` with `head` (base, sequence_classification, masked_lm,
    causal_lm), in eval mode, float32."""
    from tensorslim.compress.loading import HEADS

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    return HEADS[head].from_config(config).eval()


def tiny_inputs(batch: int = 3, length: int = 12, seed: int = 1, pad: bool = True) -> dict:
    """input_ids and attention_mask (the first sequence right-padded when `pad`)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, length - 4 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tiny_tokenizer():
    """A word-level fast tokenizer over the tiny vocabulary: "w3 w4 ..." -> ids 3, 4, ... (0 pads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
