"""Factorised word embeddings (ALBERT's V x r x D): the input embedding table E (V, D) as
low (V, r) @ up (r, D), and a tied output head that reads the same two factors.

`FactoredEmbedding` replaces `model.get_input_embeddings()`: forward(ids) = low[ids] @ up. A head
tied to the input embeddings (`config.tie_word_embeddings`: Llama/SmolLM2, GPT-2, BERT's MLM head)
becomes a `FactoredHead` computing logits = (h @ up^T) @ low^T (+ its bias). It reads the
embedding's `low` and `up` at call time without registering them, so the state dict holds them once
and a training step moves both sides together. transformers' own tying (`tie_weights()`, which
would assign `lm_head.weight`) is switched off in the student's config (`tie_word_embeddings`
False); the section's `embeddings["tied"]` records the teacher's setting, which `merge_embeddings`
restores. An untied head stays dense.

Initialisation (float64): the truncated SVD E ~ U_r S_r V_r^T with low = U_r S_r and up = V_r^T
(up has orthonormal rows, so low is E projected on the top-r right singular vectors: low = E up^T).
With token frequencies (calibration data) the fit minimises sum_t w_t ||E_t - low_t up||^2 with
w_t = count_t + 1 (add-one: a token the data never shows keeps the weight of one occurrence); the
optimum is the SVD of diag(sqrt w) E, with low's rows divided by sqrt(w_t) afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..errors import TensorslimError

FLOOR = 1.0  # the weight every token gets on top of its count (add-one)


class FactoredEmbedding(nn.Module):
    """low (V, r) @ up (r, D) in place of an nn.Embedding(V, D). `padding_idx` is kept and, as in
    nn.Embedding, gets no gradient; its row of `low` is what the fit gives (zero when the teacher's
    padding row is zero)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None, **kw):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank, self.padding_idx = (
            num_embeddings,
            embedding_dim,
            rank,
            padding_idx,
        )
        self.low = nn.Parameter(torch.empty(num_embeddings, rank, **kw))
        self.up = nn.Parameter(torch.empty(rank, embedding_dim, **kw))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, padding_idx={self.padding_idx}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., D)."""
        return F.embedding(ids, self.low, self.padding_idx) @ self.up

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The (V, D) table low @ up."""
        return self.low @ self.up


class FactoredHead(nn.Module):
    """A head tied to a FactoredEmbedding: h (..., D) -> (h @ up^T) @ low^T + bias, (..., V)."""

    def __init__(self, embedding: FactoredEmbedding, bias: nn.Parameter | None = None):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # read at call time, not a submodule: stored once
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self.bias = bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = (h @ self.embedding.up.T) @ self.embedding.low.T
        return logits if self.bias is None else logits + self.bias


def check_rank(rank: int, vocab: int, dim: int) -> int:
    if not isinstance(rank, int) or not 0 < rank < min(vocab, dim):
        raise TensorslimError(
            f"embedding rank {rank} is out of range for a {vocab} x {dim} embedding table",
            f"pass --embedding-rank between 1 and {min(vocab, dim) - 1}, or --embedding-compression",
        )
    return rank


def rank_for_compression(vocab: int, dim: int, compression: float) -> int:
    """The largest r with r (V + D) <= (1 - compression) V D: that share of the table's weights removed."""
    if not 0 < compression < 1:
        raise TensorslimError(
            f"embedding compression {compression:g} is not between 0 and 1 (exclusive)",
            "pass the share of the word-embedding weights to remove, e.g. --embedding-compression 50%",
        )
    rank = int((1 - compression) * vocab * dim // (vocab + dim))
    if rank < 1:
        raise TensorslimError(
            f"an embedding compression of {compression:.0%} leaves no rank for a {vocab} x {dim} table",
            "pass a smaller --embedding-compression or an --embedding-rank",
        )
    return rank


def rank_of_embeddings(model: PreTrainedModel, rank: int | None, compression: float | None) -> int | None:
    """The rank of `model`'s word-embedding factors from an explicit `rank` or a `compression`
    (None: the embeddings stay dense)."""
    if rank is not None and compression is not None:
        raise TensorslimError(
            "both an embedding rank and an embedding compression were given",
            "pass one of --embedding-rank, --embedding-compression",
        )
    if rank is None and compression is None:
        return None
    vocab, dim = model.get_input_embeddings().weight.shape
    return check_rank(rank, vocab, dim) if rank is not None else rank_for_compression(vocab, dim, compression)


def token_counts(batches: list[dict[str, torch.Tensor]], vocab: int) -> torch.Tensor:
    """(V,) float64 occurrences of each id among the real (attention_mask) tokens of `batches`."""
    counts = torch.zeros(vocab, dtype=torch.float64)
    for batch in batches:
        ids = batch["input_ids"][batch["attention_mask"].bool()]
        counts += torch.bincount(ids.flatten(), minlength=vocab)[:vocab].double()
    return counts


def fit(E: torch.Tensor, rank: int, counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(low (V, r), up (r, D), record) of E (V, D) in float64: the truncated SVD, or with `counts`
    the frequency-weighted fit (module docstring). The record holds the relative error
    ||E - low up|| / ||E|| and, with counts, the weighted one."""
    E64 = E.detach().double().cpu()
    w = None if counts is None else counts.double().cpu() + FLOOR
    scaled = E64 if w is None else E64 * w.sqrt()[:, None]
    U, S, Vh = torch.linalg.svd(scaled, full_matrices=False)
    low, up = U[:, :rank] * S[:rank], Vh[:rank]
    if w is not None:
        low = low / w.sqrt()[:, None]
    diff = E64 - low @ up
    record = {"relative_error": (diff.norm() / E64.norm().clamp_min(1e-30)).item()}
    if w is not None:
        weighted = (w[:, None] * diff**2).sum() / (w[:, None] * E64**2).sum().clamp_min(1e-30)
        record["weighted_error"] = weighted.sqrt().item()
        record["tokens"] = int(counts.sum().item())
    return low, up, record


def _tied_head(model: PreTrainedModel, tied: bool) -> nn.Module | None:
    """The model's output embeddings when `tied` and the class has them, else None."""
    return model.get_output_embeddings() if tied else None


def _tie_map(model: PreTrainedModel, tied: bool) -> dict[str, str]:
    """transformers' {target: source} parameter ties of `model` with tie_word_embeddings = `tied`."""
    model.config.tie_word_embeddings = tied
    return model.get_expanded_tied_weights_keys(all_submodels=True)


def _untie(model: PreTrainedModel, full: dict[str, str]) -> None:
    """Stop transformers from tying the head to the embedding table (its tie_weights() would
    assign head.weight); the ties of `full` between parameters that still exist (BERT's decoder
    bias to `cls.predictions.bias`) stay in its mapping."""
    model.config.tie_word_embeddings = False
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    model.all_tied_weights_keys = {t: s for t, s in full.items() if t in names and s in names}


def install(model: PreTrainedModel, spec: dict) -> FactoredEmbedding:
    """Swap the input embedding (and a tied head) for factored modules of `spec`'s rank, factors
    uninitialised (the loading path; `factorize_embeddings` fills them)."""
    old = model.get_input_embeddings()
    if not isinstance(old, nn.Embedding):
        raise TensorslimError(
            f"the input embedding is a {type(old).__name__}, not an nn.Embedding",
            "the config was edited or comes from another model; re-run tensorslim decompose",
        )
    vocab, dim = old.weight.shape
    check_rank(spec["rank"], vocab, dim)
    new = FactoredEmbedding(vocab, dim, spec["rank"], old.padding_idx, device=old.weight.device, dtype=old.weight.dtype)
    head = _tied_head(model, spec["tied"])
    ties = _tie_map(model, spec["tied"])
    model.set_input_embeddings(new)
    new._is_hf_initialized = True
    if head is not None:
        bias = getattr(head, "bias", None)
        factored = FactoredHead(new, bias if isinstance(bias, nn.Parameter) else None)
        factored._is_hf_initialized = True
        model.set_output_embeddings(factored)
    _untie(model, ties)
    return new


@torch.no_grad()
def factorize_embeddings(model: PreTrainedModel, rank: int, counts: torch.Tensor | None = None) -> tuple[dict, dict]:
    """Factorise `model`'s word embeddings in place at `rank` (frequency init with `counts`);
    returns (the section's `embeddings` entry, the record: rank, init, errors, weights)."""
    E = model.get_input_embeddings().weight
    vocab, dim = E.shape
    check_rank(rank, vocab, dim)
    if not torch.isfinite(E).all():
        raise TensorslimError(
            "the teacher's word embeddings hold NaN or infinite values",
            "the checkpoint is corrupt; use a finite teacher",
        )
    low, up, record = fit(E, rank, counts)
    spec = {
        "rank": rank,
        "tied": bool(getattr(model.config, "tie_word_embeddings", False)),
        "init": "svd" if counts is None else "frequency",
    }
    new = install(model, spec)
    new.low.copy_(low)
    new.up.copy_(up)
    record.update(spec, weights={"teacher": vocab * dim, "student": rank * (vocab + dim)})
    return spec, record


@torch.no_grad()
def merge_embeddings(model: PreTrainedModel, spec: dict) -> None:
    """The FactoredEmbedding back into an nn.Embedding of low @ up (and a FactoredHead back into an
    nn.Linear tied to it, as transformers ties it), the config's tying restored."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, FactoredEmbedding):
        return
    V, D, device = emb.num_embeddings, emb.embedding_dim, emb.low.device
    dense = nn.Embedding(V, D, emb.padding_idx, device=device, dtype=emb.low.dtype)
    dense.weight.copy_(emb.dense_weight())
    head = model.get_output_embeddings()
    model.set_input_embeddings(dense)
    if isinstance(head, FactoredHead):
        linear = nn.Linear(D, V, bias=head.bias is not None, device=device)
        if head.bias is not None:
            linear.bias = head.bias
        linear.weight = dense.weight
        model.set_output_embeddings(linear)
    model.config.tie_word_embeddings = spec["tied"]
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    if spec["tied"] and head is not None:
        model.tie_weights()
