"""One shard's work, in a pool worker (or in-process): tokenize, build every epoch, write its files
(an Arrow IPC stream and/or a JSON-lines part per epoch, see layout.py), each atomically."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...io import atomic_file
from .layout import shard_files
from .recipe import epoch_rows, tokenize
from .vocab import Vocab

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("token_type_ids", pa.list_(pa.int8())),
        ("masked_lm_positions", pa.list_(pa.int32())),
        ("masked_lm_labels", pa.list_(pa.int32())),
        ("is_random_next", pa.bool_()),
    ]
)

_WORKER: dict = {}


def init_worker(vocab: Vocab, in_pool: bool) -> None:
    """Load the tokenizer once per process; pool workers leave Ctrl-C to the main process and end
    with it (`_exit_with_parent`)."""
    from tokenizers import Tokenizer

    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with_parent()
    tokenizer = Tokenizer.from_str(vocab.tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    _WORKER.update(vocab=vocab, tokenizer=tokenizer)


def _exit_with_parent() -> None:
    """End this pool worker as soon as the main process is gone (e.g. killed with SIGKILL).

    Otherwise it would wait for work forever, and keep the forkserver it came from alive too: each
    holds the other's pipes open, so neither sees the main process go.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def process_shard(task: tuple) -> dict:
    """Build every epoch of one shard, write its files atomically and return its counts."""
    shard, documents, config, out = task
    vocab: Vocab = _WORKER["vocab"]
    docs = tokenize(documents, _WORKER["tokenizer"], config.max_tokens)
    record = {"shard": shard, "documents": len(documents), "epochs": []}
    for epoch in range(config.epochs):
        rows = epoch_rows(docs, shard, epoch, config, vocab)
        files = shard_files(out, shard, epoch, config.formats)
        for path in files:
            if path.suffix == ".arrow":
                _write_arrow(path, rows)
            else:
                _write_jsonl(path, rows, vocab)
        record["epochs"].append(
            {
                "sequences": len(rows),
                "tokens": sum(len(r[0]) for r in rows),
                "masked": sum(len(r[2]) for r in rows),
                "random_next": sum(r[4] for r in rows),
                "bytes": {p.suffix[1:]: p.stat().st_size for p in files},
            }
        )
    return record


def _write_arrow(path: Path, rows: list[tuple]) -> None:
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 5
    table = pa.Table.from_arrays(
        [
            _column(columns[0], np.int32, pa.int32()),
            _column(columns[1], np.int8, pa.int8()),
            _column(columns[2], np.int32, pa.int32()),
            _column(columns[3], np.int32, pa.int32()),
            pa.array(columns[4], type=pa.bool_()),
        ],
        schema=SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(table)
    with atomic_file(path, "wb") as handle:
        handle.write(sink.getvalue().to_pybytes())


def _write_jsonl(path: Path, rows: list[tuple], vocab: Vocab) -> None:
    tokens = vocab.tokens
    with atomic_file(path, "w", encoding="utf-8") as handle:
        for masked, segments, positions, labels, random_next in rows:
            handle.write(
                json.dumps(
                    {
                        "tokens": [tokens[t] for t in masked],
                        "segment_ids": segments,
                        "is_random_next": random_next,
                        "masked_lm_positions": positions,
                        "masked_lm_labels": [tokens[t] for t in labels],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def _column(rows: list[list[int]], dtype, arrow_type) -> pa.Array:
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=arrow_type))
