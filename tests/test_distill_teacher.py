"""Teacher features: recorded pre-softmax attention scores equal a manual computation from the
teacher's own weights, for BERT, RoBERTa and DistilBERT, and for a decomposed student (every
family's scores against its eager attention: tests/test_families.py)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from tensorslim.compress.api import from_teacher
from tensorslim.distill.attention import capture_scores
from tensorslim.distill.teacher import forward_features, num_layers
from tensorslim.errors import TensorslimError

SMALL = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=32,
    max_position_embeddings=40,
)


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
        wq, bq = q.weight[h * dh : (h + 1) * dh], q.bias[h * dh : (h + 1) * dh]
        wk, bk = k.weight[h * dh : (h + 1) * dh], k.bias[h * dh : (h + 1) * dh]
        out[:, h] = (hidden @ wq.T + bq) @ (hidden @ wk.T + bk).transpose(1, 2) / math.sqrt(dh)
    return out


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_recorded_scores_equal_manual_computation(family):
    torch.manual_seed(0)
    if family == "bert":
        model = BertModel(BertConfig(**SMALL))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**{**SMALL, "max_position_embeddings": 40}))
    else:
        model = DistilBertModel(
            DistilBertConfig(vocab_size=50, dim=16, n_layers=3, n_heads=4, hidden_dim=32, max_position_embeddings=40)
        )
    model.eval()
    batch = inputs()
    if family == "distilbert":
        batch.pop("token_type_ids")
    with torch.no_grad():
        feats = forward_features(model, batch, frozenset({"attention_scores", "hidden_states"}), [0, 2])
    assert len(feats.attention_scores) == num_layers(model) == 3 and feats.attention_scores[1] is None
    base = model.base_model
    layers = base.encoder.layer if family != "distilbert" else base.transformer.layer
    for layer in (0, 2):
        att = layers[layer].attention
        q, k = (att.self.query, att.self.key) if family != "distilbert" else (att.q_lin, att.k_lin)
        expected = manual_scores(feats.hidden_states[layer], q, k, 4)
        torch.testing.assert_close(feats.attention_scores[layer], expected, rtol=1e-5, atol=1e-5)


def test_softmax_of_masked_scores_is_the_eager_attention():
    """Independent check: softmax(scores + mask) equals the attention probabilities eager BERT returns."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SMALL, attn_implementation="eager")).eval()
    batch = inputs()
    with torch.no_grad(), capture_scores(model) as scores:
        probs = model(**batch, output_attentions=True).attentions
    add = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in range(3):
        torch.testing.assert_close(torch.softmax(scores[layer] + add, -1), probs[layer], rtol=1e-5, atol=1e-6)


def test_the_attention_implementation_is_restored_and_gradients_flow():
    model = BertModel(BertConfig(**SMALL))
    before = model.config._attn_implementation
    with capture_scores(model) as scores:
        model(**inputs())
    assert model.config._attn_implementation == before
    scores[1].sum().backward()
    assert model.encoder.layer[1].attention.self.query.weight.grad is not None
    with torch.no_grad():  # outside the context nothing is recorded
        model(**inputs())
    assert len(scores) == 3


def test_unsupported_model_is_refused():
    from transformers import T5Config, T5Model

    with pytest.raises(TensorslimError, match="model type 't5' is not supported"):
        num_layers(T5Model(T5Config(num_layers=1, d_model=16, d_kv=8, d_ff=32, num_heads=2, vocab_size=50)))


def test_student_scores_are_recorded_like_the_teachers(tiny_bert_dir):
    student = from_teacher(tiny_bert_dir, method="tucker", rank=32, layer_rank=24, head="base").eval()
    teacher = BertModel.from_pretrained(tiny_bert_dir).eval()
    batch = inputs()
    batch["input_ids"] = batch["input_ids"] + 1000
    with torch.no_grad():
        feats = forward_features(student, batch, frozenset({"attention_scores", "hidden_states"}), [1])
        ref = forward_features(teacher, batch, frozenset({"attention_scores", "hidden_states"}), [1])
    assert len(feats.attention_scores) == 2 and feats.attention_scores[1].shape == (2, 4, 7, 7)
    assert feats.attention_scores[0] is None  # only the layers asked for
    torch.testing.assert_close(feats.attention_scores[1], ref.attention_scores[1], atol=1e-4, rtol=1e-4)
    assert len(feats.hidden_states) == 3


def test_scores_of_a_student_in_cpu_inference_cover_the_whole_batch(tiny_bert_dir):
    """Students run CPU inference in groups of sequences; recording scores runs whole batches."""
    from tensorslim.compress import chunking
    from tensorslim.compress.api import from_teacher

    student = from_teacher(tiny_bert_dir, method="tucker", rank=16, layer_rank=8, head="base").eval()
    chunking.disable(student.base_model)
    chunking.enable(student.base_model, 7)  # one 7-token sequence per group
    batch = inputs()
    batch["input_ids"] = batch["input_ids"] + 1000
    with torch.no_grad():
        feats = forward_features(student, batch, frozenset({"attention_scores"}), [0, 1])
    assert len(feats.attention_scores) == 2 and feats.attention_scores[1].shape == (2, 4, 7, 7)
