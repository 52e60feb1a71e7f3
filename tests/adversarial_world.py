"""The inputs and earlier outputs the adversarial suite attacks, made once per test process.

A tiny random BERT teacher (with the real bert-base-uncased vocabulary), a tiny SST-2 in GLUE
layout, a small text corpus and GloVe file, and the outputs of earlier commands on them: a
decomposed student, pregenerated data and a fine-tuned classifier. Cases that must change a
directory get a copy (`World.copy`); everything else is snapshotted before and after.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest import make_tiny_bert

#: Training flags that keep every training case to a couple of tiny steps.
TRAIN = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "1",
]
#: `demo` flags that cut every stage to a step or two (SST-2; pass --glue-dir too).
TINY_DEMO = [
    "--task",
    "SST-2",
    "--compression",
    "2",
    "--max-seq-length",
    "32",
    "--general-steps",
    "1",
    "--stage1-steps",
    "1",
    "--stage2-steps",
    "1",
    "--aug-n",
    "0",
    "--corpus-documents",
    "20",
    "--finetune-epochs",
    "0.5",
    "--batch-size",
    "4",
]

WORDS = [
    "good",
    "bad",
    "film",
    "movie",
    "great",
    "awful",
    "plot",
    "actor",
    "scene",
    "boring",
    "lovely",
    "dull",
    "story",
    "music",
    "fine",
    "poor",
    "river",
    "house",
    "green",
    "small",
    "old",
    "city",
    "water",
    "light",
    "people",
    "north",
    "king",
    "song",
    "paper",
    "stone",
]


@dataclass
class World:
    root: Path
    teacher: Path  # tiny BERT with an MLM head
    glue: Path  # GLUE root holding SST-2/{train,dev,test}.tsv
    corpus: Path  # plain text, a blank line between documents
    glove: Path  # GloVe text file over WORDS
    student: Path  # `decompose` output
    pregen: Path  # `pregenerate` output
    finetuned: Path  # `finetune` output (SST-2 classifier with its training record)

    def copy(self, name: str, dest: Path) -> Path:
        """A private copy of input `name` (e.g. "teacher") at `dest`."""
        source = getattr(self, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, dest)
        return dest

    def inputs(self) -> list[Path]:
        return [self.teacher, self.glue, self.corpus, self.glove, self.student, self.pregen, self.finetuned]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))


def write_sst2(root: Path, rows: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    task = root / "SST-2"
    task.mkdir(parents=True)
    for split in ("train", "dev"):
        lines = ["sentence\tlabel"] + [f"{_sentence(rng)}\t{i % 2}" for i in range(rows)]
        (task / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["index\tsentence"] + [f"{i}\t{_sentence(rng)}" for i in range(rows)]
    (task / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_corpus(path: Path, docs: int = 12, seed: int = 1) -> Path:
    rng = random.Random(seed)
    text = "\n\n".join(
        "\n".join(_sentence(rng).capitalize() + "." for _ in range(rng.randint(3, 6))) for _ in range(docs)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_glove(path: Path, dim: int = 8, seed: int = 2) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(f"{w} {' '.join(f'{rng.uniform(-1, 1):.4f}' for _ in range(dim))}\n" for w in WORDS))
    return path


def build_world(root: Path, tokenizer) -> World:
    from tensorslim.cli.flags import parse_training_args
    from tensorslim.compress.api import decompose_to_dir
    from tensorslim.data.pregenerate import PregenerateConfig, pregenerate
    from tensorslim.train import finetune
    from tensorslim.train.recipes import FINETUNE_TRAINING

    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    teacher = make_tiny_bert(inputs / "teacher", tokenizer)
    glue = write_sst2(inputs / "glue")
    corpus = write_corpus(inputs / "corpus.txt")
    glove = write_glove(inputs / "glove.txt")
    student = inputs / "student"
    decompose_to_dir(teacher, student, rank=8)
    pregen = pregenerate(
        [corpus], teacher, inputs / "pregen", PregenerateConfig(epochs=1, docs_per_shard=2, max_seq_len=32)
    )
    finetuned = inputs / "finetuned"
    finetune(
        teacher,
        "SST-2",
        glue,
        finetuned,
        parse_training_args(TRAIN, finetuned / "checkpoints", FINETUNE_TRAINING),
        max_seq_length=32,
    )
    return World(root, teacher, glue, corpus, glove, student, pregen, finetuned)
