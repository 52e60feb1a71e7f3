"""Pre-training data generation: BERT's masked-LM + next-sentence recipe, sharded, parallel, resumable.

    config.py    PregenerateConfig: every setting, checked
    vocab.py     the teacher's tokenizer: loading, fingerprint, Vocab (what the recipe needs)
    recipe.py    BERT's recipe on one shard's tokenized documents (pure, seeded per epoch and shard)
    shard.py     one shard's work in a worker: tokenize, build every epoch, write its files
    pool.py      in-process or forkserver pool, at most 2 x workers shards in flight
    state.py     resume: the settings a --resume must match, the finished shards
    layout.py    the output's file names
    manifest.py  pregenerate.json: written last, read back by read_manifest / load_pregenerated
    generate.py  `pregenerate`: corpus -> shards -> pool -> manifest

See docs/pregenerate.md.
"""

from .config import FORMATS, PregenerateConfig
from .generate import pregenerate
from .layout import MANIFEST, MANIFEST_FORMAT, PROGRESS, STATE
from .manifest import load_pregenerated, read_manifest
from .vocab import load_tokenizer, tokenizer_fingerprint

__all__ = [
    "FORMATS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "PROGRESS",
    "STATE",
    "PregenerateConfig",
    "load_pregenerated",
    "load_tokenizer",
    "pregenerate",
    "read_manifest",
    "tokenizer_fingerprint",
]
