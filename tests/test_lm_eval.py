"""Students load in lm-evaluation-harness's Hugging Face backend with no special code.

A tiny Llama teacher and its decomposed students wrapped in `lm_eval.models.huggingface.HFLM` run
`lm_eval.simple_evaluate` on a local multiple-choice task (a YAML task file over a jsonl file, read
offline through `datasets`' json builder). The full-rank student (lowrank at rank = hidden size:
every slice exact) must score what the teacher scores, choice by choice; a truncated one must not.
"""

from __future__ import annotations

import json

import lm_eval
import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from tensorslim.compress.api import decompose
from tiny_models import tiny_model, tiny_tokenizer

TASK = "tensorslim_tiny_mc"
ROWS = [
    {"question": "w3 w4 w5 w6", "choices": ["w7", "w8", "w9", "w10"], "label": 0},
    {"question": "w11 w12 w13", "choices": ["w14 w15", "w16", "w17 w18 w19", "w20"], "label": 2},
    {"question": "w21 w22", "choices": ["w23", "w24", "w25", "w26"], "label": 3},
    {"question": "w27 w28 w29 w30 w31", "choices": ["w32", "w33 w34", "w35", "w36"], "label": 1},
]


def write_task(root) -> TaskManager:
    """A multiple-choice task over ROWS, as lm-eval's own YAML tasks are written."""
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (root / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {root / 'cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return TaskManager(include_path=str(root))


def run(model, tasks: TaskManager) -> tuple[dict, torch.Tensor]:
    """(metrics, (documents, choices) log-likelihoods) of `model` on the task."""
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"  # lm-eval prefixes loglikelihood requests with BOS or EOS
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=tasks, log_samples=True, random_seed=0)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return out["results"][TASK], torch.tensor([[float(ll) for ll, _ in s["filtered_resps"]] for s in samples])


def test_a_student_runs_in_lm_eval_and_scores_like_its_teacher_at_full_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = write_task(tmp_path)
    teacher_metrics, teacher_ll = run(tiny_model("llama", "causal_lm"), tasks)
    assert teacher_ll.shape == (4, 4) and torch.isfinite(teacher_ll).all() and (teacher_ll < 0).all()
    # acc is the share of documents whose gold choice has the highest log-likelihood
    gold = torch.tensor([row["label"] for row in ROWS])
    assert teacher_metrics["acc,none"] == pytest.approx((teacher_ll.argmax(1) == gold).float().mean().item())

    full, _ = decompose(tiny_model("llama", "causal_lm"), "lowrank", rank=32)
    full_metrics, full_ll = run(full, tasks)
    assert full_metrics["acc,none"] == teacher_metrics["acc,none"]
    assert full_metrics["acc_norm,none"] == teacher_metrics["acc_norm,none"]
    torch.testing.assert_close(full_ll, teacher_ll, atol=1e-4, rtol=0)

    truncated, _ = decompose(tiny_model("llama", "causal_lm"), "lowrank", rank=2)
    _, truncated_ll = run(truncated, tasks)
    assert (truncated_ll - teacher_ll).abs().max() > 1e-2
