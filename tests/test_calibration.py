"""Calibration data (GLUE tasks, plain text, pregenerated shards) and the input second moments of the
decomposed projections, against references captured independently from the dense models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tensorslim.compress.calibration import input_moments, slice_covariances
from tensorslim.compress.inplace import layout
from tensorslim.data.calibration import calibration_batches
from tensorslim.data.packing import packed_sequences
from tensorslim.data.pregenerate import PregenerateConfig, load_pregenerated, pregenerate
from tensorslim.errors import TensorslimError
from tiny_models import VOCAB, tiny_inputs, tiny_model, tiny_tokenizer

D = 32


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(rng.randint(low, high)))


def sst2_dir(root: Path, n: int = 30) -> Path:
    """An SST-2 task directory of random tiny-vocabulary sentences of 3-12 words."""
    task = root / "SST-2"
    task.mkdir(parents=True)
    rng = random.Random(5)
    task.joinpath("train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{words(rng, 3, 12)}\t{i % 2}\n" for i in range(n))
    )
    return task


def text_corpus(path: Path, docs: int = 6, seed: int = 3) -> Path:
    """Documents of 4-9 sentences of 2-7 words, one sentence a line, blank lines between documents."""
    rng = random.Random(seed)
    path.write_text("\n\n".join("\n".join(words(rng, 2, 7) for _ in range(rng.randint(4, 9))) for _ in range(docs)))
    return path


def sequences(batches) -> list[list[int]]:
    """The unpadded input_ids of every row, checking that the pads sit at the end."""
    out = []
    for batch in batches:
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True):
            n = sum(mask)
            assert mask == [1] * n + [0] * (len(mask) - n)
            out.append(ids[:n])
    return out


# ------------------------------------------------------------------------------------- data


def test_glue_task_is_a_seeded_sample_of_training_sentences(tmp_path):
    task, tok = sst2_dir(tmp_path), tiny_tokenizer()
    sentences = [line.split("\t")[0] for line in task.joinpath("train.tsv").read_text().splitlines()[1:]]
    encoded = {tuple(tok(s)["input_ids"][:8]) for s in sentences}
    batches = calibration_batches(task, tok, samples=10, seq_length=8, batch_size=4, causal=False)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    rows = sequences(batches)
    assert len({tuple(r) for r in rows}) == 10 and all(tuple(r) in encoded for r in rows)
    assert max(len(r) for r in rows) == 8  # some sentences were cut at seq_length
    again = calibration_batches(task, tok, samples=10, seq_length=8, batch_size=4, causal=False)
    assert sequences(again) == rows
    assert sequences(calibration_batches(task, tok, samples=10, seq_length=8, seed=1, causal=False)) != rows
    assert len(sequences(calibration_batches(task, tok, samples=100, seq_length=8, causal=False))) == 30


def test_glue_pairs_are_encoded_as_pairs(tmp_path, tokenizer):
    task = tmp_path / "RTE"
    task.mkdir()
    pairs = [("the river is green.", "the river has a colour."), ("a king sang.", "nobody sang a song.")]
    rows = "".join(f"{i}\t{a}\t{b}\tentailment\n" for i, (a, b) in enumerate(pairs))
    task.joinpath("train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + rows)
    (batch,) = calibration_batches(task, tokenizer, samples=2, seq_length=32, causal=False)
    expected = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[name], expected[name]), name
    assert batch["token_type_ids"].max() == 1


def test_causal_text_is_packed_windows(tmp_path):
    corpus, tok = text_corpus(tmp_path / "c.txt", docs=12), tiny_tokenizer()
    windows = [tuple(w) for w in packed_sequences([corpus], tok, 8)]
    assert len(windows) > 10
    batches = calibration_batches(corpus, tok, samples=6, seq_length=8, batch_size=4, causal=True)
    rows = [tuple(r) for r in sequences(batches)]
    assert len(rows) == 6 and all(len(r) == 8 and r in windows for r in rows)
    assert rows == sorted(rows, key=windows.index)  # corpus order
    other = [
        tuple(r) for r in sequences(calibration_batches(corpus, tok, samples=6, seq_length=8, seed=2, causal=True))
    ]
    assert other != rows
    assert [tuple(r) for r in sequences(calibration_batches(corpus, tok, samples=6, seq_length=8, causal=True))] == rows


def test_encoder_text_joins_consecutive_sentences_of_a_document(tmp_path):
    corpus, tok = text_corpus(tmp_path / "c.txt"), tiny_tokenizer()
    docs = [[tok(s)["input_ids"] for s in d.splitlines()] for d in corpus.read_text().split("\n\n")]
    # every greedy run of consecutive sentences of a document within 12 tokens
    runs = set()
    for doc in docs:
        run: list[int] = []
        for ids in doc:
            if run and len(run) + len(ids) > 12:
                runs.add(tuple(run))
                run = []
            run = run + ids
        runs.add(tuple(run[:12]))
    rows = sequences(calibration_batches(corpus, tok, samples=1000, seq_length=12, causal=False))
    assert {tuple(r) for r in rows} == runs and len(rows) == len(runs)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, real_teacher_dir) -> Path:
    root = tmp_path_factory.mktemp("shards")
    rng = random.Random(0)
    plain = "the a of river house green small old city water light people year music north king song".split()
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            "\n".join(" ".join(rng.choice(plain) for _ in range(rng.randint(5, 14))) + "." for _ in range(8))
            for _ in range(10)
        )
    )
    return pregenerate([corpus], real_teacher_dir, root / "out", PregenerateConfig(epochs=2, max_seq_len=32))


def test_pregenerated_shards_give_their_stored_ids(shards, tokenizer):
    stored = {tuple(r["input_ids"][:24]): r["token_type_ids"][:24] for r in load_pregenerated(shards, 0).to_list()}
    batches = calibration_batches(shards, tokenizer, samples=5, seq_length=24, batch_size=2, causal=False)
    rows = sequences(batches)
    assert len(rows) == 5 and all(tuple(r) in stored for r in rows)
    types = [t for b in batches for t, m in zip(b["token_type_ids"].tolist(), b["attention_mask"].tolist())]
    assert [t[: len(r)] for t, r in zip(types, rows)] == [stored[tuple(r)] for r in rows]
    with pytest.raises(TensorslimError, match="another vocabulary"):
        calibration_batches(shards, tiny_tokenizer(), causal=False)


def test_real_glue_and_wikitext(shared_data, tokenizer):
    sst2 = calibration_batches(shared_data / "glue" / "SST-2", tokenizer, samples=16, seq_length=64, causal=False)
    rows = sequences(sst2)
    assert len(rows) == 16 and all(r[0] == tokenizer.cls_token_id and r[-1] == tokenizer.sep_token_id for r in rows)
    wiki = shared_data / "corpus" / "wikitext_raw" / "wiki.valid.raw"
    rows = sequences(calibration_batches(wiki, tokenizer, samples=4, seq_length=64, causal=True))
    assert len(rows) == 4 and all(len(r) == 64 for r in rows)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p / "empty.txt", "holds no sentences"),
        (lambda p: p / "blob.bin", "looks binary"),
        (lambda p: p / "latin.txt", "is not UTF-8"),
        (lambda p: p / "emptydir", "calibration data .* holds no files"),
        (lambda p: p / "model", "calibration data .* looks binary"),
        (lambda p: p / "SST-2" / "train.tsv", "is a TSV file"),
        (lambda p: p, r"holds \d GLUE task"),
        (lambda p: p / "headers" / "SST-2", "has a header but no rows"),
        (lambda p: p / "Unknown", "not named after a GLUE task"),
        (lambda p: p / "short.txt", "fewer than 64 tokens"),
    ],
)
def test_bad_calibration_data_is_refused(tmp_path, make, match):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "blob.bin").write_bytes(b"w3 w4\x00\x01")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 w3\n".encode("latin-1"))
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    sst2_dir(tmp_path)
    (tmp_path / "headers" / "SST-2").mkdir(parents=True)
    (tmp_path / "headers" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "Unknown").mkdir()
    (tmp_path / "Unknown" / "train.tsv").write_text("sentence\tlabel\nw3 w4\t0\n")
    (tmp_path / "short.txt").write_text("w3 w4 w5.\n")
    with pytest.raises(TensorslimError, match=match):
        calibration_batches(make(tmp_path), tiny_tokenizer(), seq_length=64, causal=True)


def test_samples_below_one_are_refused(tmp_path):
    with pytest.raises(TensorslimError, match="--calibration-samples 0 is out of range"):
        calibration_batches(sst2_dir(tmp_path), tiny_tokenizer(), samples=0, causal=False)


# ---------------------------------------------------------------------------------- moments


def batches_of(length: int = 24, pad: bool = True) -> list[dict]:
    return [tiny_inputs(batch=3, length=length, seed=s, pad=pad) for s in (1, 2, 3)]


def second_moment(inputs: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """(1/N) X^T X over the real rows of (B, T, F) tensors, in float64."""
    X = torch.cat([x[m.bool()] for x, m in zip(inputs, masks)]).double()
    return X.T @ X / X.shape[0]


def recorded(model, batches, taps: dict) -> dict[str, list[torch.Tensor]]:
    """{name: [one tensor per batch]} of `taps[name] = (module, fn(inputs, output))`, from forward hooks."""
    seen = {name: [] for name in taps}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name, fn=fn: seen[name].append(fn(i, o)))
        for name, (module, fn) in taps.items()
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for handle in handles:
        handle.remove()
    return seen


def captured(model, batches, taps: dict) -> dict[str, torch.Tensor]:
    """{name: second moment over the real tokens} of what `recorded` records."""
    masks = [b["attention_mask"] for b in batches]
    return {name: second_moment(values, masks) for name, values in recorded(model, batches, taps).items()}


def test_bert_moments_match_captured_inputs():
    model, batches = tiny_model("bert"), batches_of()
    moments = input_moments(model, batches)
    layers = model.encoder.layer
    taps = {}
    for i, layer in enumerate(layers):
        taps |= {
            f"{i}.o": (layer.attention.self, lambda i_, o: o[0]),
            f"{i}.ffn_in": (layer.attention, lambda i_, o: o[0]),
            f"{i}.ffn_out": (layer.intermediate, lambda i_, o: o),
        }
    reference = captured(model, batches, taps)
    with torch.no_grad():
        states = [model(**b, output_hidden_states=True).hidden_states for b in batches]
    masks = [b["attention_mask"] for b in batches]
    assert moments.tokens == sum(int(m.sum()) for m in masks)
    for i in range(len(layers)):
        x = second_moment([s[i] for s in states], masks)
        expected = {
            "attention.self.query": x,
            "attention.self.key": x,
            "attention.self.value": x,
            "attention.output.dense": reference[f"{i}.o"],
            "intermediate.dense": reference[f"{i}.ffn_in"],
            "output.dense": reference[f"{i}.ffn_out"],
        }
        for path, want in expected.items():
            got = moments.by_module[f"{i}.{path}"]
            assert got.dtype == torch.float64 and got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{i}.{path}")
    q, k, v = (moments.by_module[f"0.attention.self.{p}"] for p in ("query", "key", "value"))
    assert q is k is v and moments.by_module["1.attention.self.query"] is not q
    distinct = 2 * (3 * D * D + 4 * D * 4 * D)  # per layer: x, o input, FFN input (D wide), FFN output input (4D)
    assert moments.bytes == 8 * distinct


def test_llama_moments_match_captured_inputs():
    model, batches = tiny_model("llama"), batches_of()
    moments = input_moments(model, batches)
    taps = {}
    for i, layer in enumerate(model.layers):
        taps |= {
            f"{i}.x": (layer.input_layernorm, lambda i_, o: o),
            f"{i}.o": (layer.self_attn.o_proj, lambda i_, o: i_[0]),
            f"{i}.h": (layer.post_attention_layernorm, lambda i_, o: o),
            f"{i}.gate": (layer.mlp.gate_proj, lambda i_, o: o),
            f"{i}.up": (layer.mlp.up_proj, lambda i_, o: o),
        }
    seen = recorded(model, batches, taps)
    masks = [b["attention_mask"] for b in batches]
    reference = {name: second_moment(values, masks) for name, values in seen.items()}
    for i, layer in enumerate(model.layers):
        # the down projection's input is act(gate) * up, formed here from the two outputs
        down = [layer.mlp.act_fn(g) * u for g, u in zip(seen[f"{i}.gate"], seen[f"{i}.up"])]
        expected = {
            "self_attn.q_proj": reference[f"{i}.x"],
            "self_attn.k_proj": reference[f"{i}.x"],
            "self_attn.v_proj": reference[f"{i}.x"],
            "self_attn.o_proj": reference[f"{i}.o"],
            "mlp.gate_proj": reference[f"{i}.h"],
            "mlp.up_proj": reference[f"{i}.h"],
            "mlp.down_proj": second_moment(down, masks),
        }
        for path, want in expected.items():
            torch.testing.assert_close(moments.by_module[f"{i}.{path}"], want, rtol=1e-5, atol=1e-6, msg=path)
    by = moments.by_module
    assert by["0.mlp.gate_proj"] is by["0.mlp.up_proj"] and by["0.self_attn.q_proj"] is by["0.self_attn.v_proj"]


def test_gpt2_fused_conv1d_moments():
    model, batches = tiny_model("gpt2"), batches_of()
    moments = input_moments(model, batches)
    block = model.h[1]
    reference = captured(
        model,
        batches,
        {
            "attn": (block.ln_1, lambda i_, o: o),
            "fc": (block.ln_2, lambda i_, o: o),
            "proj": (block.mlp.c_fc, lambda i_, o: block.mlp.act(o)),
        },
    )
    for path, name in (("attn.c_attn", "attn"), ("mlp.c_fc", "fc"), ("mlp.c_proj", "proj")):
        torch.testing.assert_close(moments.by_module[f"1.{path}"], reference[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_padding_is_excluded(model_type):
    model, plain = tiny_model(model_type), batches_of(pad=False)
    padded = []
    for batch in plain:
        extra = torch.zeros(3, 5, dtype=torch.long)
        padded.append(
            {
                "input_ids": torch.cat([batch["input_ids"], extra + 7], 1),
                "attention_mask": torch.cat([batch["attention_mask"], extra], 1),
            }
        )
    a, b = input_moments(model, plain), input_moments(model, padded)
    assert a.tokens == b.tokens == 3 * 3 * 24
    for key, moment in a.by_module.items():
        torch.testing.assert_close(b.by_module[key], moment, rtol=1e-5, atol=1e-6, msg=key)


def test_too_few_tokens_are_refused():
    model = tiny_model("bert")
    batch = tiny_inputs(batch=2, length=60, pad=False)  # 120 tokens, FFN output input is 128 wide
    with pytest.raises(TensorslimError, match="fewer than the input width 128"):
        input_moments(model, [batch])
    assert input_moments(model, [batch], ops="san").tokens == 120  # attention inputs are 32 wide


def test_moments_are_deterministic_for_a_seed(tmp_path):
    model, task, tok = tiny_model("bert"), sst2_dir(tmp_path, 60), tiny_tokenizer()

    def run(seed):
        batches = calibration_batches(task, tok, samples=20, seq_length=16, seed=seed, causal=False)
        return input_moments(model, batches).by_module["1.output.dense"]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


# ----------------------------------------------------------------------------- slice moments


def test_bert_slice_covariances_follow_the_paper_order():
    model = tiny_model("bert")
    moments = input_moments(model, batches_of())
    groups, layouts, _ = layout(model)
    (name,) = groups
    weights = slice_covariances(moments, layouts)[name]
    by = moments.by_module
    rows, cols = weights.rows_index.tolist(), weights.cols_index.tolist()
    # per layer 12 slices: q, k, v, o, ffn_in.0-3 (input on the columns), ffn_out.0-3 (input on the rows)
    assert rows == [12 * i + s for i in range(2) for s in (0, 1, 2, 3, 8, 9, 10, 11)]
    assert cols == [12 * i + s for i in range(2) for s in (4, 5, 6, 7)]
    assert weights.rows_cov.shape == (16, D, D) and weights.cols_cov.shape == (8, D, D)
    for i in range(2):
        for s, path in enumerate(["attention.self.query", "attention.self.key", "attention.self.value"]):
            assert torch.equal(weights.rows_cov[rows.index(12 * i + s)], by[f"{i}.{path}"])
        assert torch.equal(weights.rows_cov[rows.index(12 * i + 3)], by[f"{i}.attention.output.dense"])
        for a in range(4):
            ffn_out = by[f"{i}.output.dense"][a * D : (a + 1) * D, a * D : (a + 1) * D]
            assert torch.equal(weights.rows_cov[rows.index(12 * i + 8 + a)], ffn_out)
            assert torch.equal(weights.cols_cov[cols.index(12 * i + 4 + a)], by[f"{i}.intermediate.dense"])


def test_llama_slice_covariances():
    model = tiny_model("llama")
    moments = input_moments(model, batches_of())
    groups, layouts, _ = layout(model)
    weights = slice_covariances(moments, layouts)
    by = moments.by_module
    assert set(weights) == set(groups) == {"32x32", "32x16", "80x32"}
    for name, group in groups.items():
        w = weights[name]
        every = sorted(w.rows_index.tolist() + w.cols_index.tolist())
        assert every == list(range(group.num_slices))
    # q, o (32x32) and k, v (32x16) are [in, out]: all inputs on the rows
    assert weights["32x32"].cols_index.numel() == weights["32x16"].cols_index.numel() == 0
    assert weights["32x16"].cols_cov.shape == (0, 16, 16)
    for i in range(2):
        assert torch.equal(weights["32x32"].rows_cov[2 * i], by[f"{i}.self_attn.q_proj"])
        assert torch.equal(weights["32x32"].rows_cov[2 * i + 1], by[f"{i}.self_attn.o_proj"])
        assert torch.equal(weights["32x16"].rows_cov[2 * i + 1], by[f"{i}.self_attn.v_proj"])
    # gate, up, down per layer: gate and up are [out, in] (80 x 32, input on the columns), down [in, out]
    ffn = weights["80x32"]
    assert ffn.cols_index.tolist() == [0, 1, 3, 4] and ffn.rows_index.tolist() == [2, 5]
    assert ffn.cols_cov.shape == (4, D, D) and ffn.rows_cov.shape == (2, 80, 80)
    assert torch.equal(ffn.cols_cov[2], by["1.mlp.gate_proj"]) and torch.equal(ffn.rows_cov[1], by["1.mlp.down_proj"])
