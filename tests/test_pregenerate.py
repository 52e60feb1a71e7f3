"""Pre-training data generation: the BERT recipe's statistics, formats, determinism and resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import digest
from tensorslim.cli import main as cli_main
from tensorslim.data.pregenerate import PregenerateConfig, load_pregenerated, pregenerate
from tensorslim.errors import TensorslimError

# Words the bert-base-uncased vocabulary splits into several pieces, mixed with whole words.
MULTI = [
    "unaffable",
    "crustaceans",
    "exoskeleton",
    "planktonic",
    "ecdysis",
    "moulting",
    "gammarus",
    "lobsters",
    "conspicuous",
    "nodules",
    "asymmetrical",
    "pereiopods",
    "homarus",
    "centimetres",
    "larvae",
]
PLAIN = (
    "the a of and to in is was for on that with by as at from his her it an were are which this be "
    "river house green small old city water light people year music north king song paper stone"
).split()


def write_corpus(path: Path, n_docs: int, sentences: tuple[int, int] = (8, 20), seed: int = 0) -> Path:
    """One sentence a line, blank line between documents; random words, some of several pieces."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(n_docs):
            for _ in range(rng.randint(*sentences)):
                words = [
                    rng.choice(MULTI) if rng.random() < 0.25 else rng.choice(PLAIN) for _ in range(rng.randint(5, 18))
                ]
                handle.write(" ".join(words).capitalize() + ".\n")
            handle.write("\n")
    return path


def rows(directory: Path, epoch: int | None = None) -> list[dict]:
    return load_pregenerated(directory, epoch).to_list()


def original(row: dict) -> list[int]:
    ids = list(row["input_ids"])
    for pos, label in zip(row["masked_lm_positions"], row["masked_lm_labels"]):
        ids[pos] = label
    return ids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt", 81)


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus, real_teacher_dir) -> Path:
    """NSP pairs, token masking, 2 epochs, Arrow + JSON, 8 documents a shard, one worker."""
    out = tmp_path_factory.mktemp("base") / "out"
    config = PregenerateConfig(epochs=2, docs_per_shard=8, format="both")
    return pregenerate([corpus], real_teacher_dir, out, config, workers=1)


@pytest.fixture(scope="module")
def doc_streams(corpus, tokenizer) -> list[str]:
    """Each document's tokens as ',id,id,...,' so contiguous runs can be found by substring search."""
    docs = [d.splitlines() for d in corpus.read_text().strip().split("\n\n")]
    streams = []
    for doc in docs:
        ids = [i for s in tokenizer(doc, add_special_tokens=False)["input_ids"] for i in s]
        streams.append("," + ",".join(map(str, ids)) + ",")
    return streams


def test_layout_schema_and_manifest(base, tokenizer):
    manifest = json.loads((base / "pregenerate.json").read_text())
    assert manifest["num_shards"] == 10  # 81 documents: 9 shards of 8, the lone 81st joins the last
    assert manifest["config"]["docs_per_shard"] == 8 and manifest["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert not (base / ".pregenerate-state.json").exists() and not (base / ".pregenerate-progress.jsonl").exists()
    shard = base / "epoch_0" / "shard_00000.arrow"
    with pa.memory_map(str(shard)) as source:
        schema = pa.ipc.open_stream(source).schema
    assert schema.field("input_ids").type == pa.list_(pa.int32())
    assert schema.field("token_type_ids").type == pa.list_(pa.int8())
    assert schema.field("masked_lm_positions").type == pa.list_(pa.int32())
    assert schema.field("masked_lm_labels").type == pa.list_(pa.int32())
    assert schema.field("is_random_next").type == pa.bool_()
    for epoch, entry in enumerate(manifest["epochs"]):
        metrics = json.loads((base / f"epoch_{epoch}" / "metrics.json").read_text())
        assert metrics["num_sequences"] == entry["num_sequences"] == len(load_pregenerated(base, epoch))
        assert metrics["num_documents"] == 81 and metrics["max_seq_len"] == 128
    dataset = load_pregenerated(base)
    assert len(dataset) == sum(e["num_sequences"] for e in manifest["epochs"])
    assert dataset.cache_files and all(Path(f["filename"]).suffix == ".arrow" for f in dataset.cache_files)


def test_sequences_special_tokens_and_segments(base, tokenizer):
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for row in rows(base):
        ids, types = original(row), row["token_type_ids"]
        assert len(ids) == len(types) <= 128
        seps = [i for i, t in enumerate(ids) if t == sep]
        assert ids[0] == cls and len(seps) == 2 and seps[1] == len(ids) - 1 and seps[0] >= 2
        assert types == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        assert row["input_ids"][0] == cls and [row["input_ids"][s] for s in seps] == [sep, sep]


def test_masking_statistics(base, tokenizer):
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    counts = {"mask": 0, "keep": 0, "random": 0}
    for row in rows(base):
        positions, labels, ids = row["masked_lm_positions"], row["masked_lm_labels"], row["input_ids"]
        assert positions == sorted(set(positions))
        assert len(positions) == len(labels) == min(20, max(1, int(round(len(ids) * 0.15))))
        orig = original(row)
        assert all(orig[p] not in (cls, sep) for p in positions)
        # everything not listed is unchanged: only masked positions may differ from the original
        assert all(ids[i] == orig[i] for i in range(len(ids)) if i not in set(positions))
        for p, label in zip(positions, labels):
            counts["mask" if ids[p] == mask else "keep" if ids[p] == label else "random"] += 1
    total = sum(counts.values())
    assert total > 5000
    assert abs(counts["mask"] / total - 0.8) < 0.025
    assert abs(counts["keep"] / total - 0.1) < 0.02
    assert abs(counts["random"] / total - 0.1) < 0.02


def test_labels_are_original_tokens_and_pairs_come_from_documents(base, tokenizer, doc_streams):
    """Unmasked segments are contiguous runs of a document; a real next sentence is from the same one."""
    sep = tokenizer.sep_token_id
    data = rows(base, 0)
    for row in data:
        ids = original(row)
        cut = ids.index(sep)
        a, b = ids[1:cut], ids[cut + 1 : -1]
        docs_a = {i for i, s in enumerate(doc_streams) if "," + ",".join(map(str, a)) + "," in s}
        docs_b = {i for i, s in enumerate(doc_streams) if "," + ",".join(map(str, b)) + "," in s}
        assert docs_a and docs_b
        if not row["is_random_next"]:
            assert docs_a & docs_b
    share = sum(r["is_random_next"] for r in data) / len(data)
    assert 0.42 < share < 0.62, share


def test_epochs_are_masked_differently(base):
    first, second = rows(base, 0), rows(base, 1)
    assert len(first) > 100 and first != second
    same = len({tuple(r["masked_lm_positions"]) for r in first} & {tuple(r["masked_lm_positions"]) for r in second})
    assert same < 0.05 * len(first)


def test_json_format_round_trips(base, tokenizer):
    for epoch in range(2):
        lines = (base / f"epoch_{epoch}.json").read_text().splitlines()
        arrow = rows(base, epoch)
        assert len(lines) == len(arrow)
        assert json.loads((base / f"epoch_{epoch}_metrics.json").read_text()) == {
            "num_training_examples": len(arrow),
            "max_seq_len": 128,
        }
        for line, row in zip(lines, arrow):
            item = json.loads(line)
            assert list(item) == ["tokens", "segment_ids", "is_random_next", "masked_lm_positions", "masked_lm_labels"]
            assert tokenizer.convert_tokens_to_ids(item["tokens"]) == row["input_ids"]
            assert item["segment_ids"] == row["token_type_ids"]
            assert item["masked_lm_positions"] == row["masked_lm_positions"]
            assert tokenizer.convert_tokens_to_ids(item["masked_lm_labels"]) == row["masked_lm_labels"]
            assert item["is_random_next"] == row["is_random_next"]
    assert not list((base / "epoch_0").glob("*.jsonl"))


def test_whole_word_masking_masks_all_pieces_together(tmp_path, corpus, real_teacher_dir, tokenizer):
    out = pregenerate(
        [corpus],
        real_teacher_dir,
        tmp_path / "wwm",
        PregenerateConfig(epochs=1, docs_per_shard=8, whole_word_mask=True),
        workers=1,
    )
    tokens_of = tokenizer.convert_ids_to_tokens
    mask = tokenizer.mask_token_id
    multi_piece = 0
    for row in rows(out):
        ids, orig = row["input_ids"], original(row)
        masked = set(row["masked_lm_positions"])
        assert len(masked) <= 20
        toks = tokens_of(orig)
        words, current = [], []
        for i, tok in enumerate(toks):
            if tok in ("[CLS]", "[SEP]"):
                continue
            if tok.startswith("##") and current and current[-1] == i - 1:
                current.append(i)
            else:
                current = [i]
                words.append(current)
        for word in words:
            hit = [p in masked for p in word]
            assert all(hit) or not any(hit), (toks, word, sorted(masked))
            if all(hit):
                assert len({ids[p] == mask for p in word}) == 1  # one 80/10/10 decision per word
                multi_piece += len(word) > 1
    assert multi_piece > 100


def test_single_sequences_without_nsp(tmp_path, corpus, real_teacher_dir, tokenizer):
    out = pregenerate(
        [corpus],
        real_teacher_dir,
        tmp_path / "nonsp",
        PregenerateConfig(epochs=1, docs_per_shard=8, nsp=False, max_seq_len=64),
        workers=1,
    )
    data = rows(out)
    assert data
    for row in data:
        ids = original(row)
        assert len(ids) <= 64 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.sep_token_id not in ids[:-1]
        assert set(row["token_type_ids"]) == {0} and row["is_random_next"] is False


def test_short_seq_prob_and_prediction_cap(tmp_path, real_teacher_dir):
    corpus = write_corpus(tmp_path / "c.txt", 40, sentences=(20, 30))
    lengths = {}
    for prob in (0.0, 1.0):
        config = PregenerateConfig(
            epochs=1,
            docs_per_shard=10,
            max_seq_len=64,
            short_seq_prob=prob,
            masked_lm_prob=0.5,
            max_predictions_per_seq=5,
        )
        data = rows(pregenerate([corpus], real_teacher_dir, tmp_path / f"p{prob}", config))
        assert all(len(r["input_ids"]) <= 64 for r in data)
        assert all(len(r["masked_lm_positions"]) == min(5, round(len(r["input_ids"]) * 0.5)) for r in data)
        lengths[prob] = [len(r["input_ids"]) for r in data]
    assert sum(n == 64 for n in lengths[0.0]) > 0.8 * len(lengths[0.0])
    mean = {prob: sum(v) / len(v) for prob, v in lengths.items()}
    assert mean[1.0] < 0.8 * mean[0.0], mean


def test_same_output_with_two_workers(tmp_path, base, corpus, real_teacher_dir):
    config = PregenerateConfig(epochs=2, docs_per_shard=8, format="both")
    out = pregenerate([corpus], real_teacher_dir, tmp_path / "two", config, workers=2)
    assert digest(out) == digest(base)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, real_teacher_dir) -> tuple[Path, dict]:
    """A corpus of 50 two-document shards and the digest of its uninterrupted output."""
    tmp = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(tmp / "big.txt", 100, sentences=(20, 30), seed=1)
    out = pregenerate(
        [corpus], real_teacher_dir, tmp / "reference", PregenerateConfig(epochs=2, docs_per_shard=2, format="both")
    )
    return corpus, digest(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_resume_after_signal_gives_identical_output(tmp_path, real_teacher_dir, resumable, sig, workers):
    corpus, reference = resumable
    args = [
        "pregenerate",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(real_teacher_dir),
        "--epochs",
        "2",
        "--docs-per-shard",
        "2",
        "--format",
        "both",
        "--workers",
        str(workers),
    ]
    out = tmp_path / "interrupted"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorslim.cli", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = out / ".pregenerate-progress.jsonl"
    deadline = time.time() + 600  # generous: CI machines can be loaded
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and progress.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    assert not (out / "pregenerate.json").exists()
    with pytest.raises(TensorslimError, match="(?s)unfinished.*--resume"):
        load_pregenerated(out)
    finished = [json.loads(line)["shard"] for line in progress.read_text().splitlines()]
    assert 3 <= len(finished) < 50
    kept = out / "epoch_1" / f"shard_{finished[0]:05d}.arrow"
    inode = kept.stat().st_ino

    assert cli_main([*args, "--out", str(out), "--resume"]) == 0
    assert kept.stat().st_ino == inode  # the finished shard was skipped, not rewritten
    assert digest(out) == reference


def test_cli_output_dir_rules_and_resume_checks(tmp_path, corpus, real_teacher_dir, capsys):
    args = [
        "pregenerate",
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(real_teacher_dir),
        "--epochs",
        "1",
        "--docs-per-shard",
        "40",
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli_main([*args, "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").exists()
    assert cli_main([*args, "--out", str(foreign), "--overwrite"]) == 0
    assert not (foreign / "notes.txt").exists() and len(load_pregenerated(foreign)) > 0
    before = digest(foreign)
    assert cli_main([*args, "--out", str(foreign), "--resume"]) == 0  # already complete: untouched
    assert digest(foreign) == before
    assert cli_main([*args, "--out", str(foreign), "--resume", "--seed", "7"]) == 2  # different settings
    assert cli_main([*args, "--out", str(tmp_path / "x"), "--docs-per-shard", "1"]) == 2
    assert cli_main([*args, "--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_load_pregenerated_refuses_incomplete_directories(tmp_path, base):
    with pytest.raises(TensorslimError, match="not a pre-generated data directory"):
        load_pregenerated(tmp_path)
    with pytest.raises(TensorslimError, match="epoch 2 requested"):
        load_pregenerated(base, 2)
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    shard = broken / "epoch_1" / "shard_00003.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert len(load_pregenerated(broken, 0)) == len(load_pregenerated(base, 0))
    with pytest.raises(TensorslimError, match="shard_00003.arrow is missing or has the wrong size"):
        load_pregenerated(broken)


def test_config_validation():
    for bad in (
        {"epochs": 0},
        {"max_seq_len": 4},
        {"masked_lm_prob": 0.0},
        {"short_seq_prob": 1.5},
        {"docs_per_shard": 1},
        {"format": "parquet"},
        {"max_predictions_per_seq": 0},
    ):
        with pytest.raises(TensorslimError):
            PregenerateConfig(**bad)
    assert PregenerateConfig(docs_per_shard=1, nsp=False).docs_per_shard == 1


def test_pool_workers_start_without_torch():
    """Workers need tokenizers and pyarrow only: the pool's server skips the package's torch and
    transformers import (seconds per process), and the parent's environment is left as it was."""
    from concurrent.futures import ProcessPoolExecutor

    from tensorslim import DATA_WORKER_ENV
    from tensorslim.data.pregenerate.pool import pool_context

    with ProcessPoolExecutor(1, mp_context=pool_context()) as pool:
        loaded = pool.submit(
            eval,
            "[m in __import__('sys').modules for m in ('torch', 'transformers', 'tensorslim.data.pregenerate.shard')]",
        ).result()
    assert loaded == [False, False, True]
    assert DATA_WORKER_ENV not in os.environ
