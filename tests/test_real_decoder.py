"""The packaged real decoder (SmolLM2-135M, Llama architecture, GQA, FFN 1536 on hidden 576)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tensorslim.compress.api import decompose
from tensorslim.evaluate.perplexity import perplexity, read_text

pytestmark = pytest.mark.slow


def test_smollm2_converts_speaks_and_decomposes_exactly_at_full_rank(smollm2_dir, shared_data):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1] :])
    text = read_text(shared_data / "corpus" / "wikitext_raw" / "wiki.test.raw")
    dense = perplexity(model, tokenizer, text, seq_length=512, max_tokens=1024)
    assert 5 < dense["perplexity"] < 100 and dense["windows"] == 2
    # tucker with every slice and both sides whole: the three slice groups of a Llama-shaped decoder
    # in the paper's grouping (layer window 0)
    student, record = decompose(copy.deepcopy(model), "tucker", rank=576, layer_rank=90, layer_window=0, max_iter=0)
    assert {n: g["num_slices"] for n, g in record["groups"].items()} == {"576x576": 60, "576x192": 60, "1536x576": 90}
    with torch.no_grad():
        torch.testing.assert_close(student(**prompt).logits, model(**prompt).logits, atol=1e-3, rtol=1e-3)
