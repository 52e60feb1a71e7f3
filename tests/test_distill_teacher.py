"""Teacher features: hooked pre-softmax attention scores equal a manual computation from the
teacher's own weights, for BERT, RoBERTa and DistilBERT, and for a decomposed model natively."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig,
                          RobertaForSequenceClassification)

from tensorslim.distill.teacher import capture_scores, forward_features, num_layers, query_key_modules
from tensorslim.errors import TensorslimError
from tensorslim.modeling.convert import from_teacher

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
             max_position_embeddings=40)


def inputs():
    torch.manual_seed(1)
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def manual_scores(hidden: torch.Tensor, q: torch.nn.Linear, k: torch.nn.Linear, heads: int) -> torch.Tensor:
    """Q K^T / sqrt(d_head) from the layer's input and its projection weights, head by head."""
    b, t, d = hidden.shape
    dh = d // heads
    out = torch.empty(b, heads, t, t)
    for h in range(heads):
        wq, bq = q.weight[h * dh:(h + 1) * dh], q.bias[h * dh:(h + 1) * dh]
        wk, bk = k.weight[h * dh:(h + 1) * dh], k.bias[h * dh:(h + 1) * dh]
        out[:, h] = (hidden @ wq.T + bq) @ (hidden @ wk.T + bk).transpose(1, 2) / math.sqrt(dh)
    return out


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_hooked_scores_equal_manual_computation(family):
    torch.manual_seed(0)
    if family == "bert":
        model = BertModel(BertConfig(**SMALL))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**{**SMALL, "max_position_embeddings": 40}))
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=3, n_heads=4, hidden_dim=32,
                                                 max_position_embeddings=40))
    model.eval()
    batch = inputs()
    if family == "distilbert":
        batch.pop("token_type_ids")
    with torch.no_grad():
        feats = forward_features(model, batch, frozenset({"attention_scores", "hidden_states"}), [0, 2])
    assert len(feats.attention_scores) == num_layers(model) == 3 and feats.attention_scores[1] is None
    pairs = query_key_modules(model)
    for layer in (0, 2):
        q, k = pairs[layer]
        expected = manual_scores(feats.hidden_states[layer], q, k, 4)
        torch.testing.assert_close(feats.attention_scores[layer], expected, rtol=1e-5, atol=1e-5)


def test_softmax_of_masked_scores_is_the_eager_attention():
    """Independent check: softmax(scores + mask) equals the attention probabilities eager BERT returns."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SMALL, attn_implementation="eager")).eval()
    batch = inputs()
    with torch.no_grad(), capture_scores(model, [0, 1, 2]) as scores:
        probs = model(**batch, output_attentions=True).attentions
    add = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in range(3):
        torch.testing.assert_close(torch.softmax(scores[layer] + add, -1), probs[layer], rtol=1e-5, atol=1e-6)


def test_hooks_are_removed_and_gradients_flow():
    model = BertModel(BertConfig(**SMALL))
    with capture_scores(model, [1]) as scores:
        model(**inputs())
    scores[1].sum().backward()
    assert model.encoder.layer[1].attention.self.query.weight.grad is not None
    assert all(not m._forward_hooks for m in model.modules())


def test_unsupported_model_is_refused():
    with pytest.raises(TensorslimError, match="query/key"):
        query_key_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_decomposed_model_gives_scores_natively(tiny_bert_dir):
    student = from_teacher(tiny_bert_dir, method="tucker", rank=16, layer_rank=8, head="base").eval()
    batch = inputs()
    batch["input_ids"] = batch["input_ids"] + 1000
    with torch.no_grad():
        feats = forward_features(student, batch, frozenset({"attention_scores", "hidden_states"}), [1])
        out = student(**batch, output_attention_scores=True)
    assert len(feats.attention_scores) == 2 and feats.attention_scores[1].shape == (2, 4, 7, 7)
    torch.testing.assert_close(feats.attention_scores[1], out.attention_scores[1])
    assert len(feats.hidden_states) == 3
