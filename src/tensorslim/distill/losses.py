"""Distillation loss terms, chosen by name from `LOSSES`.

Every term has the signature ``term(student, teacher, batch) -> scalar tensor`` where `student` and
`teacher` are `Features` (see `tensorslim.distill.teacher`) and `batch` is a `LossBatch`. Shapes:
hidden states (B, T, D), attention scores (B, H, T, T) before softmax with no mask added, logits
(B, C) or (B, 1) for regression. Layer-wise terms sum over the (student, teacher) layer pairs of
`batch.layer_map` (0-based encoder layer indices), as TinyBERT does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import TensorslimError


@dataclass
class LossBatch:
    """What a loss term needs besides the two models' features."""

    attention_mask: torch.Tensor  # (B, T), 1 for real tokens
    layer_map: list[tuple[int, int]]  # (student layer, teacher layer) pairs, 0-based
    labels: torch.Tensor | None = None  # (B,) class ids or float scores
    temperature: float = 1.0
    causal: bool = False  # decoders: a query attends to no later key


def masked_score_mse(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
) -> torch.Tensor:
    """MSE between (B, H, T, T) pre-softmax scores with padded *key* positions (and, for causal
    models, keys after the query) set to 0 in both.

    This is the paper's attention loss: the release adds the -10000 mask and then zeroes every
    score <= -100, which is the same as zeroing masked key columns. The mean runs over all
    B*H*T*T entries, zeros included (as `torch.nn.MSELoss` does in the release).
    """
    keep = attention_mask[:, None, None, :].to(torch.bool)
    if causal:
        T = student.shape[-1]
        keep = keep & torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    zero = student.new_zeros(())
    return F.mse_loss(torch.where(keep, student, zero), torch.where(keep, teacher.to(student.dtype), zero))


def _check_width(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise TensorslimError(
            f"student and teacher {what} have different shapes {tuple(student.shape)} vs {tuple(teacher.shape)}",
            "use a student with the teacher's hidden size and head count (decomposed students always have them)",
        )


def attention_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """Sum over mapped layers of `masked_score_mse` on pre-softmax attention scores."""
    total = 0.0
    for s, t in batch.layer_map:
        _check_width(student.attention_scores[s], teacher.attention_scores[t], "attention scores")
        total = total + masked_score_mse(
            student.attention_scores[s], teacher.attention_scores[t], batch.attention_mask, batch.causal
        )
    return total


def hidden_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """Sum over mapped layers of the MSE between layer outputs (hidden_states[layer + 1])."""
    total = 0.0
    for s, t in batch.layer_map:
        hs, ht = student.hidden_states[s + 1], teacher.hidden_states[t + 1]
        _check_width(hs, ht, "hidden states")
        total = total + F.mse_loss(hs, ht.to(hs.dtype))
    return total


def embedding_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """MSE between the embedding outputs (hidden_states[0]), TinyBERT's layer-0 term."""
    hs, ht = student.hidden_states[0], teacher.hidden_states[0]
    _check_width(hs, ht, "embeddings")
    return F.mse_loss(hs, ht.to(hs.dtype))


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -sum_c softmax(t / T)_c * log_softmax(s / T)_c (TinyBERT's, no T^2 factor)."""
    target = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def logits_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """Soft cross-entropy against the teacher's logits at `batch.temperature`."""
    return soft_cross_entropy(student.logits, teacher.logits, batch.temperature)


def token_kl_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """Causal LMs: T^2 KL(teacher || student) of the next-token distributions at temperature T,
    averaged over the real (unpadded) positions; logits (B, T, V)."""
    t = batch.temperature
    log_p = F.log_softmax(teacher.logits.float() / t, dim=-1)
    log_q = F.log_softmax(student.logits.float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
    keep = batch.attention_mask.to(kl.dtype)
    return t * t * (kl * keep).sum() / keep.sum().clamp_min(1)


def regression_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """MSE of the student's (B, 1) score to the gold score (METHOD section 5, STS-B)."""
    if batch.labels is None:
        raise TensorslimError(
            "the 'regression' loss needs gold labels but the batch has none",
            "use a labelled GLUE split for stage 2 of task distillation",
        )
    return F.mse_loss(student.logits.float().view(-1), batch.labels.float().view(-1))


def teacher_regression_loss(student, teacher, batch: LossBatch) -> torch.Tensor:
    """MSE of the student's (B, 1) score to the teacher's score."""
    return F.mse_loss(student.logits.float().view(-1), teacher.logits.float().view(-1))


LossTerm = Callable[..., torch.Tensor]

#: name -> (term, what the student and teacher forward passes must expose)
LOSSES: dict[str, tuple[LossTerm, frozenset[str]]] = {
    "attention": (attention_loss, frozenset({"attention_scores"})),
    "hidden": (hidden_loss, frozenset({"hidden_states"})),
    "embedding": (embedding_loss, frozenset({"hidden_states"})),
    "logits": (logits_loss, frozenset({"logits"})),
    "token_kl": (token_kl_loss, frozenset({"logits"})),
    "regression": (regression_loss, frozenset({"logits"})),
    "teacher_regression": (teacher_regression_loss, frozenset({"logits"})),
}


def get_loss(name: str) -> tuple[LossTerm, frozenset[str]]:
    """The loss term registered under `name` and the features it needs."""
    try:
        return LOSSES[name]
    except KeyError:
        raise TensorslimError(f"unknown distillation loss {name!r}", f"choose from {', '.join(LOSSES)}") from None
