"""TinyBERT's data augmentation for GLUE training sets, with batched candidate search.

For every word of a sentence (split like BERT's BasicTokenizer: whitespace and punctuation,
lower-cased and accent-stripped for uncased models) that is alphabetic and not a stop word:
- one word piece: the top M predictions of a masked LM for
  ``[CLS] sentence-with-[MASK] [SEP] sentence [SEP]`` ("##" pieces and special tokens dropped);
- several word pieces: its M nearest GloVe neighbours by cosine.
Each of N new sentences replaces each such word by a random candidate with probability p; the
new sentences are the words joined by single spaces, duplicates dropped. See docs/augment.md.

Randomness comes from one generator per example, seeded by (seed, example index), so the output
depends on neither the batch size nor where an interrupted run was resumed.
"""

from .augmentor import Augmented, Augmentor
from .candidates import MaskedLMCandidates, resolve_device
from .run import augment_task, build_augmentor, check_inputs, output_path
from .words import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_M,
    DEFAULT_N,
    DEFAULT_P,
    DEFAULT_SEED,
    OUTPUT_NAME,
    STOP_WORDS,
    TASK_N,
    WordSplitter,
    check_settings,
    is_eligible,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_M",
    "DEFAULT_N",
    "DEFAULT_P",
    "DEFAULT_SEED",
    "OUTPUT_NAME",
    "STOP_WORDS",
    "TASK_N",
    "Augmented",
    "Augmentor",
    "MaskedLMCandidates",
    "WordSplitter",
    "augment_task",
    "build_augmentor",
    "check_inputs",
    "check_settings",
    "is_eligible",
    "output_path",
    "resolve_device",
]
