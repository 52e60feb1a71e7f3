"""The decomposed BERT student: transformers PreTrainedModel classes, registered with the Auto classes.

Embeddings, biases, LayerNorms, pooler and heads are dense; the encoder's `ops` matrices are
FactoredLinear groups reading one shared `Factors` module (stored once in the checkpoint).
Outputs carry every layer's hidden states and, on request, pre-softmax attention scores
(QK^T / sqrt(d_head), no mask added) for distillation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ModelOutput
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead, BertPooler
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

from ..decomposition.stacking import ops_slots
from .configuration import DecomposedBertConfig
from .factorized import DenseLinear, FactoredLinear, Factors

GROUPS = {  # group: (input width, output width) in units of D given the FFN multiple k
    "qkv": lambda k: (1, 3), "o": lambda k: (1, 1), "ffn_in": lambda k: (1, k), "ffn_out": lambda k: (k, 1),
}


@dataclass
class DecomposedBertOutput(ModelOutput):
    """last_hidden_state (B, T, D); pooler_output (B, D); hidden_states: L + 1 tensors (B, T, D),
    embeddings first; attention_scores: L tensors (B, H, T, T), pre-softmax."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None


@dataclass
class DecomposedBertHeadOutput(ModelOutput):
    """loss; logits (B, num_labels) or (B, T, vocab); plus the encoder outputs as above."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None


def slice_groups(config: DecomposedBertConfig, layer: int) -> dict[str, list[int]]:
    """Slice indices (into the (n, D, D) stack) of each decomposed group of `layer`."""
    slots = ops_slots(config.ops, config.ffn_mult)
    groups: dict[str, list[int]] = {}
    for j, slot in enumerate(slots):
        groups.setdefault(slot.group, []).append(layer * len(slots) + j)
    return groups


class DecomposedBertLayer(nn.Module):
    """Post-LN BERT layer whose projections are FactoredLinear (in `ops`) or DenseLinear."""

    def __init__(self, config: DecomposedBertConfig, layer: int):
        super().__init__()
        D, k = config.hidden_size, config.ffn_mult
        self.num_heads, self.head_dim = config.num_attention_heads, D // config.num_attention_heads
        groups = slice_groups(config, layer)
        for name, widths in GROUPS.items():
            fan_in_w, out_w = widths(k)
            if name in groups:
                proj = FactoredLinear(groups[name], transposed=name == "ffn_in", fan_in=name == "ffn_out", hidden_size=D)
            else:
                proj = DenseLinear(fan_in_w * D, out_w * D)
            setattr(self, name, proj)
        self.attn_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.ffn_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x, mask, factors, want_scores: bool):
        """x (B, T, D); mask: additive (B, 1, 1, T) or None. Returns (out, scores or None)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x, factors).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        drop = self.attn_dropout if self.training else 0.0
        scores = None
        if want_scores:
            scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
            probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            ctx = F.dropout(probs, drop, self.training) @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        ctx = ctx.transpose(1, 2).reshape(B, T, D)
        h = self.attn_norm(self.dropout(self.o(ctx, factors)) + x)
        out = self.ffn_norm(self.dropout(self.ffn_out(self.act(self.ffn_in(h, factors)), factors)) + h)
        return out, scores


class DecomposedBertEncoder(nn.Module):
    def __init__(self, config: DecomposedBertConfig):
        super().__init__()
        self.factors = Factors(config.method, config.num_slices, config.hidden_size)
        self.layer = nn.ModuleList(DecomposedBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.config = config

    def run_layer(self, layer: DecomposedBertLayer, x, mask, want_scores: bool):
        """layer(x); in CPU inference on groups of at most `inference_chunk_tokens` tokens (whole
        sequences), so that the large activations stay in cache (see DecomposedBertConfig)."""
        chunk = self.config.inference_chunk_tokens
        per = max(1, chunk // x.shape[1]) if chunk else x.shape[0]
        if per >= x.shape[0] or x.device.type != "cpu" or torch.is_grad_enabled():
            return layer(x, mask, self.factors, want_scores)
        parts = [layer(x[i:i + per], None if mask is None else mask[i:i + per], self.factors, want_scores)
                 for i in range(0, x.shape[0], per)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if want_scores else None

    def forward(self, x, mask, output_hidden_states: bool, output_attention_scores: bool):
        self.factors.begin_forward()
        hidden, scores = [x] if output_hidden_states else None, [] if output_attention_scores else None
        for layer in self.layer:
            x, s = self.run_layer(layer, x, mask, output_attention_scores)
            if hidden is not None:
                hidden.append(x)
            if scores is not None:
                scores.append(s)
        return x, tuple(hidden) if hidden else None, tuple(scores) if scores is not None else None


class DecomposedBertPreTrainedModel(PreTrainedModel):
    config_class = DecomposedBertConfig
    config: DecomposedBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["DecomposedBertEncoder"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Random (never zero) factors, so that a model built from a config alone can train."""
        super()._init_weights(module)
        if isinstance(module, Factors):
            for name, p in module.named_parameters():
                std = self.config.initializer_range if name in ("S", "C") else p.shape[-2] ** -0.5
                init.normal_(p, std=std)
        elif isinstance(module, FactoredLinear):
            init.zeros_(module.bias)
            init.copy_(module.slices, torch.tensor(module.slice_list))
        elif isinstance(module, BertOnlyMLMHead):
            init.zeros_(module.predictions.bias)
        elif isinstance(module, (BertEmbeddings, RobertaEmbeddings)):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs (2 x multiply-adds) per token of the encoder matmuls and attention."""
        base = self.base_model
        shared, rank = base.config.method.shared, base.config.rank
        macs = 0
        for layer in base.encoder.layer:
            macs += sum(getattr(layer, g).macs_per_token(rank, shared) for g in GROUPS)
            macs += 2 * seq_len * base.config.hidden_size  # QK^T and probs @ V
        return 2 * macs


class DecomposedBertModel(DecomposedBertPreTrainedModel):
    def __init__(self, config: DecomposedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        embeddings = RobertaEmbeddings if config.embedding_type == "roberta" else BertEmbeddings
        self.embeddings = embeddings(config)
        self.encoder = DecomposedBertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                output_hidden_states=None, output_attention_scores=None, **kwargs) -> DecomposedBertOutput:
        x = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                            inputs_embeds=inputs_embeds)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        last, hidden, scores = self.encoder(x, mask, bool(output_hidden_states), bool(output_attention_scores))
        pooled = self.pooler(last) if self.pooler is not None else None
        return DecomposedBertOutput(last, pooled, hidden, scores)


class DecomposedBertForSequenceClassification(DecomposedBertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear; MSE for num_labels == 1 (STS-B), else cross-entropy."""

    def __init__(self, config: DecomposedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = DecomposedBertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attention_scores=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attention_scores=output_attention_scores)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return DecomposedBertHeadOutput(loss, logits, out.hidden_states, out.attention_scores)


class DecomposedBertForMaskedLM(DecomposedBertPreTrainedModel):
    """BERT's MLM head on the decomposed encoder; decoder tied to the word embeddings."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: DecomposedBertConfig):
        super().__init__(config)
        self.bert = DecomposedBertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attention_scores=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_hidden_states=output_hidden_states, output_attention_scores=output_attention_scores)
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return DecomposedBertHeadOutput(loss, logits, out.hidden_states, out.attention_scores)
