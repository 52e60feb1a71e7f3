"""`pregenerate`: corpus -> shards of documents -> the recipe in a pool -> Arrow shards and manifest.

Documents are grouped in stream order into shards of `docs_per_shard`; a shard is the unit of work,
of resume and the pool random next sentences are drawn from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import TensorslimError
from ...io import check_output_dir, finish_dir, replacing
from ...signals import GracefulStop
from ..corpus import CorpusReader
from . import state
from .config import PregenerateConfig
from .layout import COMMAND, PROGRESS
from .manifest import finalize
from .pool import run_shards
from .vocab import Vocab, load_tokenizer


def pregenerate(
    corpus_paths,
    tokenizer_dir,
    out_dir,
    config: PregenerateConfig | None = None,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Generate `config.epochs` epochs of masked-LM (+NSP) data from a corpus into `out_dir`.

    `config` None means `PregenerateConfig()` (BERT's settings). Output is identical for any
    `workers`; `resume=True` continues an interrupted run (same arguments) and skips its finished
    shards. SIGINT/SIGTERM stop at a shard boundary and raise KeyboardInterrupt. Returns the output
    directory.
    """
    if workers < 1:
        raise TensorslimError(f"workers={workers}", "use --workers 1 or more")
    config = config or PregenerateConfig()
    out = Path(out_dir)
    check_output_dir(
        out, COMMAND, inputs=[*corpus_paths, tokenizer_dir], overwrite=overwrite or (resume and replacing(out, COMMAND))
    )
    reader = CorpusReader(corpus_paths, config.corpus_layout, config.max_sentence_chars)
    _check_paths(out, reader.files)
    tokenizer, tokenizer_info = load_tokenizer(tokenizer_dir)
    if config.max_seq_len > tokenizer.model_max_length:
        raise TensorslimError(
            f"max_seq_len={config.max_seq_len} exceeds the tokenizer's model_max_length {tokenizer.model_max_length}",
            "use a smaller --max-seq-length",
        )
    vocab = Vocab.from_tokenizer(tokenizer)
    if config.whole_word_mask and not vocab.is_continuation.any():
        raise TensorslimError(
            f"--whole-word-mask needs WordPiece '##' pieces; the tokenizer in {tokenizer_dir} has none",
            "drop --whole-word-mask or use a BERT (WordPiece) tokenizer",
        )
    documents = iter(reader)
    first = next(documents)  # an empty corpus fails here, before the output directory is touched
    settings = state.run_settings(config, reader.files, tokenizer_info)
    final = out
    out, done = state.prepare(final, settings, resume, overwrite)
    if done is None:
        return final

    records: dict[int, dict] = {}
    with (
        open(out / PROGRESS, "a", encoding="utf-8") as progress,
        GracefulStop("finishing the shards in progress") as stop,
        tqdm(desc="shards", unit="shard", disable=None) as bar,
    ):

        def finish(record: dict) -> None:
            records[record["shard"]] = record
            progress.write(json.dumps(record) + "\n")
            progress.flush()
            os.fsync(progress.fileno())
            bar.update(1)

        def tasks() -> Iterator[tuple]:
            """The shards still to do; finished ones (listed in PROGRESS, files intact) are recorded."""
            for shard, docs in _shards(_prepend(first, documents), config.docs_per_shard):
                if state.is_done(out, done.get(shard), config):
                    records[shard] = done[shard]
                    bar.update(1)
                else:
                    yield shard, docs, config, out

        stopped = run_shards(tasks(), vocab, workers, stop, finish)
    if stopped:
        raise KeyboardInterrupt
    stats = reader.stats
    corpus = {"documents": stats.documents, "sentences": stats.sentences, "layouts": stats.layouts}
    finalize(out, config, settings, corpus, [records[k] for k in sorted(records)])
    state.clear(out)
    return finish_dir(out, final, COMMAND)


def _check_paths(out: Path, files: list[Path]) -> None:
    out = out.resolve()
    for path in files:
        path = path.resolve()
        if out == path or out in path.parents:
            raise TensorslimError(
                f"corpus file {path} lies inside the output directory {out}", "choose an --out outside the corpus"
            )


def _prepend(first, rest):
    yield first
    yield from rest


def _shards(documents: Iterator[list[str]], per_shard: int) -> Iterator[tuple[int, list[list[str]]]]:
    """Group documents in stream order; a single trailing document joins the previous shard."""
    held, current, index = None, [], 0
    for doc in documents:
        current.append(doc)
        if len(current) == per_shard:
            if held is not None:
                yield index, held
                index += 1
            held, current = current, []
    if held is not None and len(current) == 1:
        held, current = held + current, []
    if held is not None:
        yield index, held
        index += 1
    if current:
        yield index, current
