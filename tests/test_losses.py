"""Distillation loss terms against hand-computed values, and the DistillationConfig rules."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from tensorslim.distill.config import DistillationConfig, make_config, read_config_file
from tensorslim.distill.losses import (
    LossBatch,
    attention_loss,
    embedding_loss,
    get_loss,
    hidden_loss,
    logits_loss,
    masked_score_mse,
    regression_loss,
    soft_cross_entropy,
)
from tensorslim.errors import TensorslimError
from tensorslim.train import recipes


def test_masked_score_mse_zeroes_padded_keys_and_averages_over_everything():
    # B=1, H=1, T=2; the second token is padding, so key column 1 is zeroed in both tensors.
    student = torch.tensor([[[[1.0, 5.0], [2.0, -7.0]]]])
    teacher = torch.tensor([[[[0.0, 100.0], [4.0, 3.0]]]])
    mask = torch.tensor([[1, 0]])
    # surviving differences: (1-0)^2 + (2-4)^2 = 5 over 4 entries
    assert masked_score_mse(student, teacher, mask).item() == pytest.approx(5 / 4)
    # no padding: plain MSE
    full = ((1 - 0) ** 2 + (5 - 100) ** 2 + (2 - 4) ** 2 + (-7 - 3) ** 2) / 4
    assert masked_score_mse(student, teacher, torch.ones(1, 2)).item() == pytest.approx(full)


def test_release_masking_rule_is_the_same():
    """The release adds -10000 for padded keys and zeroes scores <= -100: same as zeroing columns."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    add = (1 - mask[:, None, None, :].float()) * -10000.0
    release = lambda x: torch.where(x + add <= -100, torch.zeros_like(x), x + add)  # noqa: E731
    expected = torch.nn.functional.mse_loss(release(s), release(t))
    assert masked_score_mse(s, t, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def feats(hidden=None, scores=None, logits=None):
    return SimpleNamespace(hidden_states=hidden, attention_scores=scores, logits=logits)


def test_layer_terms_sum_over_the_layer_map():
    s_hidden = (torch.zeros(1, 2, 2), torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2))
    t_hidden = (torch.ones(1, 2, 2), torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 3 * torch.ones(1, 2, 2))
    batch = LossBatch(attention_mask=torch.ones(1, 2), layer_map=[(0, 0), (1, 2)])
    # pairs: student hs[1]=1 vs teacher hs[1]=0 -> 1; student hs[2]=2 vs teacher hs[3]=3 -> 1
    assert hidden_loss(feats(s_hidden), feats(t_hidden), batch).item() == pytest.approx(2.0)
    assert embedding_loss(feats(s_hidden), feats(t_hidden), batch).item() == pytest.approx(1.0)
    s_scores = [torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)]
    t_scores = [torch.zeros(1, 1, 2, 2), None, 2 * torch.ones(1, 1, 2, 2)]
    # (1-0)^2 + (0-2)^2
    assert attention_loss(feats(scores=s_scores), feats(scores=t_scores), batch).item() == pytest.approx(5.0)


def test_width_mismatch_is_a_clear_error():
    batch = LossBatch(attention_mask=torch.ones(1, 2), layer_map=[(0, 0)])
    with pytest.raises(TensorslimError, match="hidden size"):
        hidden_loss(feats((None, torch.zeros(1, 2, 4))), feats((None, torch.zeros(1, 2, 8))), batch)


def test_soft_cross_entropy_by_hand():
    s, t = [1.0, 2.0, 0.5], [0.2, -1.0, 3.0]
    for temperature in (1.0, 2.0):
        p = [math.exp(x / temperature) for x in t]
        p = [x / sum(p) for x in p]
        z = math.log(sum(math.exp(x / temperature) for x in s))
        expected = -sum(pi * (si / temperature - z) for pi, si in zip(p, s))
        got = soft_cross_entropy(torch.tensor([s]), torch.tensor([t]), temperature)
        assert got.item() == pytest.approx(expected, rel=1e-6)
    batch = LossBatch(attention_mask=torch.ones(1, 1), layer_map=[], temperature=2.0)
    assert logits_loss(feats(logits=torch.tensor([s])), feats(logits=torch.tensor([t])), batch).item() == pytest.approx(
        soft_cross_entropy(torch.tensor([s]), torch.tensor([t]), 2.0).item()
    )


def test_regression_uses_the_gold_score():
    batch = LossBatch(attention_mask=torch.ones(2, 1), layer_map=[], labels=torch.tensor([1.0, 4.0]))
    student, teacher = feats(logits=torch.tensor([[2.0], [2.0]])), feats(logits=torch.tensor([[9.0], [9.0]]))
    assert regression_loss(student, teacher, batch).item() == pytest.approx((1 + 4) / 2)
    assert get_loss("teacher_regression")[0](student, teacher, batch).item() == pytest.approx(49.0)


def test_layer_maps():
    assert DistillationConfig(layer_map="last").resolve_layer_map(3, 12) == [(2, 11)]
    assert DistillationConfig(layer_map="uniform").resolve_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert DistillationConfig(layer_map="uniform").resolve_layer_map(6, 6) == [(i, i) for i in range(6)]
    assert DistillationConfig(layer_map=[[0, 3]]).resolve_layer_map(2, 4) == [(0, 3)]
    with pytest.raises(TensorslimError, match="out of range"):
        DistillationConfig(layer_map=[[2, 0]]).resolve_layer_map(2, 4)
    with pytest.raises(TensorslimError, match="multiple"):
        DistillationConfig(layer_map="uniform").resolve_layer_map(4, 6)


def test_config_validation_and_needs():
    with pytest.raises(TensorslimError, match="unknown distillation loss 'mlm'"):
        DistillationConfig(losses=["mlm"])
    with pytest.raises(TensorslimError, match="temperature"):
        DistillationConfig(temperature=0)
    assert DistillationConfig(losses="attention, embedding").needs == {"attention_scores", "hidden_states"}
    assert recipes.task_objectives(True)[2].losses == ["regression"]
    assert recipes.task_objectives(False)[2].needs == {"logits"}
    assert recipes.general_objective().layer_map == "last"


def test_config_files(tmp_path):
    (tmp_path / "c.json").write_text(
        json.dumps({"losses": ["hidden"], "weights": {"hidden": 2}, "layer_map": "uniform"})
    )
    (tmp_path / "c.yaml").write_text("losses: [attention, hidden, embedding]\ntemperature: 2.0\n")
    (tmp_path / "bad.json").write_text(json.dumps({"loss": ["hidden"]}))
    config = make_config(read_config_file(tmp_path / "c.json"))
    assert (config.losses, config.weight("hidden"), config.weight("x"), config.layer_map) == (
        ["hidden"],
        2.0,
        1.0,
        "uniform",
    )
    config = make_config(read_config_file(tmp_path / "c.yaml"))
    assert config.losses == ["attention", "hidden", "embedding"] and config.temperature == 2.0
    with pytest.raises(TensorslimError, match="unknown key"):
        make_config(read_config_file(tmp_path / "bad.json"))
    with pytest.raises(TensorslimError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")


def test_causal_score_loss_ignores_keys_after_the_query():
    """Decoders: scores of later keys are never used by the model, so they must not count."""
    from tensorslim.distill.losses import masked_score_mse

    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 5, 5)
    student = teacher + torch.triu(torch.randn(2, 3, 5, 5), diagonal=1)  # differs above the diagonal only
    mask = torch.ones(2, 5)
    assert masked_score_mse(student, teacher, mask, causal=True).item() == 0.0
    assert masked_score_mse(student, teacher, mask, causal=False).item() > 0
    lower = teacher + torch.tril(torch.ones(5, 5))  # differs on and below the diagonal: 15 of 25 entries by 1
    torch.testing.assert_close(masked_score_mse(lower, teacher, mask, causal=True), torch.tensor(15 / 25))


def test_token_kl_is_the_masked_mean_of_the_per_position_kl():
    """Against torch's kl_div per position: padded positions do not count; T^2 scaling."""
    from tensorslim.distill.losses import LossBatch, token_kl_loss
    from tensorslim.distill.teacher import Features

    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for temperature in (1.0, 2.0):
        batch = LossBatch(attention_mask=mask, layer_map=[], temperature=temperature)
        got = token_kl_loss(Features(logits=s_logits), Features(logits=t_logits), batch)
        per = torch.nn.functional.kl_div(
            torch.log_softmax(s_logits / temperature, -1),
            torch.log_softmax(t_logits / temperature, -1),
            log_target=True,
            reduction="none",
        ).sum(-1)
        torch.testing.assert_close(got, temperature**2 * per[mask.bool()].mean())
    assert token_kl_loss(
        Features(logits=t_logits), Features(logits=t_logits), LossBatch(attention_mask=mask, layer_map=[])
    ).item() == pytest.approx(0.0, abs=1e-6)
