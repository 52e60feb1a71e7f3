"""The files pregenerate writes (see docs/pregenerate.md):

OUT/.tensorslim                     marker: written by pregenerate (re-runs may replace it; tensorslim.io)
OUT/epoch_{i}/shard_{k:05d}.arrow   Arrow IPC stream: input_ids list<int32>, token_type_ids
                                    list<int8>, masked_lm_positions list<int32>,
                                    masked_lm_labels list<int32>, is_random_next bool
OUT/epoch_{i}/metrics.json          per-epoch counts
OUT/epoch_{i}.json, OUT/epoch_{i}_metrics.json   the original release's format (--format json);
                                    built from OUT/epoch_{i}/shard_{k:05d}.jsonl parts
OUT/pregenerate.json                settings, tokenizer fingerprint, shard list; written last
OUT/.pregenerate-state.json, OUT/.pregenerate-progress.jsonl   run state while unfinished
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

COMMAND = "pregenerate"  # the name its output directories are marked with (tensorslim.io)
MANIFEST = "pregenerate.json"
MANIFEST_FORMAT = "tensorslim-pregenerated/1"
#: Written when a run starts and removed once MANIFEST exists: settings a --resume must match.
STATE = ".pregenerate-state.json"
#: One JSON line per finished shard, appended as shards finish; --resume skips the shards it lists.
PROGRESS = ".pregenerate-progress.jsonl"


def shard_files(out: Path, shard: int, epoch: int, formats: Iterable[str]) -> list[Path]:
    """The files one (epoch, shard) leaves: the Arrow shard and/or the JSON-lines part."""
    names = {"arrow": f"shard_{shard:05d}.arrow", "json": f"shard_{shard:05d}.jsonl"}
    return [out / f"epoch_{epoch}" / names[f] for f in formats]
