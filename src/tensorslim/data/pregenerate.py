"""Pre-training data generation: BERT's masked-LM + next-sentence recipe, sharded and resumable.

The recipe is Google's `create_pretraining_data.py` (as used by TinyBERT's
`pregenerate_training_data.py`): documents are cut into chunks of sentences close to a target length
(`max_seq_len - 3`, or a random shorter one with probability `short_seq_prob`); each chunk becomes
`[CLS] A [SEP] B [SEP]` where B continues A or, 50% of the time, is taken from another document of
the same shard (`is_random_next`). Unlike Google's code, a chunk of a single sentence (e.g. the end
of a document) is cut in two rather than always given a random next, so the share stays at 50%. The pair is truncated to fit by dropping tokens from the front or
back of the longer side. Then `min(max_predictions_per_seq, round(len * masked_lm_prob))` positions
(never [CLS]/[SEP]) are chosen; each chosen word becomes [MASK] 80% of the time, stays 10% and becomes
a random vocabulary token 10%. With `whole_word_mask` all WordPiece pieces of a word are chosen
together and share that 80/10/10 decision. `nsp=False` builds single sequences `[CLS] A [SEP]`.

Documents are grouped in stream order into shards of `docs_per_shard`; every (epoch, shard) has its
own RNG seeded from (seed, epoch, shard), so the output does not depend on the number of workers.
Output layout (see docs/pregenerate.md):

    OUT/epoch_{i}/shard_{k:05d}.arrow   Arrow IPC stream: input_ids list<int32>, token_type_ids
                                        list<int8>, masked_lm_positions list<int32>,
                                        masked_lm_labels list<int32>, is_random_next bool
    OUT/epoch_{i}/metrics.json          per-epoch counts
    OUT/epoch_{i}.json, OUT/epoch_{i}_metrics.json   the original release's format (--format json)
    OUT/pregenerate.json                settings, tokenizer fingerprint, shard list; written last
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..errors import TensorslimError
from ..io import (
    atomic_file,
    begin_dir,
    build_path,
    check_output_dir,
    finish_dir,
    remove_stale_temporaries,
    replacing,
    write_json,
)
from .corpus import LAYOUTS, CorpusReader

log = logging.getLogger(__name__)

FORMATS = ("arrow", "json", "both")
MANIFEST = "pregenerate.json"
COMMAND = "pregenerate"  # the name its output directories are marked with (tensorslim.io)
#: Written when a run starts and removed once MANIFEST exists: settings a --resume must match.
STATE = ".pregenerate-state.json"
#: One JSON line per finished shard, appended as shards finish; --resume skips the shards it lists.
PROGRESS = ".pregenerate-progress.jsonl"
MANIFEST_FORMAT = "tensorslim-pregenerated/1"

SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("token_type_ids", pa.list_(pa.int8())),
    ("masked_lm_positions", pa.list_(pa.int32())),
    ("masked_lm_labels", pa.list_(pa.int32())),
    ("is_random_next", pa.bool_()),
])


@dataclass(frozen=True)
class PregenerateConfig:
    """Every knob of the recipe; the defaults are BERT's (and the paper's: 2 epochs of distillation)."""

    epochs: int = 2
    seed: int = 42
    max_seq_len: int = 128
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_mask: bool = False
    nsp: bool = True
    docs_per_shard: int = 256
    format: str = "arrow"
    corpus_layout: str = "auto"

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs={self.epochs}", "use --epochs 1 or more"),
            (self.max_seq_len >= 8, f"max_seq_len={self.max_seq_len}", "use --max-seq-len 8 or more (BERT: 128)"),
            (0.0 <= self.short_seq_prob <= 1.0, f"short_seq_prob={self.short_seq_prob}", "use a probability in [0, 1]"),
            (0.0 < self.masked_lm_prob < 1.0, f"masked_lm_prob={self.masked_lm_prob}", "use a probability in (0, 1)"),
            (self.max_predictions_per_seq >= 1, f"max_predictions_per_seq={self.max_predictions_per_seq}",
             "use --max-predictions-per-seq 1 or more"),
            (self.docs_per_shard >= (2 if self.nsp else 1), f"docs_per_shard={self.docs_per_shard}",
             "use --docs-per-shard 2 or more: random next sentences come from another document of the shard"),
            (self.format in FORMATS, f"format={self.format!r}", f"use one of {', '.join(FORMATS)}"),
            (self.corpus_layout in LAYOUTS, f"corpus_layout={self.corpus_layout!r}", f"use one of {', '.join(LAYOUTS)}"),
        ]
        for ok, value, fix in checks:
            if not ok:
                raise TensorslimError(f"invalid pre-generation setting {value}", fix)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("arrow", "json") if self.format == "both" else (self.format,)

    @property
    def max_sentence_chars(self) -> int:
        """Corpus sentences longer than this are cut: about 10 characters a token, 10x what fits."""
        return 10 * self.max_seq_len


# ----------------------------------------------------------------------------- tokenizer

@dataclass
class _Vocab:
    """What the recipe needs from a WordPiece tokenizer, in a picklable/array form."""

    tokenizer_json: str
    tokens: list[str]
    cls_id: int
    sep_id: int
    mask_id: int
    is_continuation: np.ndarray  # bool [vocab]: the token is a "##" piece
    random_ids: np.ndarray  # int [n]: ids a masked token may be replaced by (no special/[unused] tokens)


def load_tokenizer(tokenizer_dir) -> tuple[object, dict]:
    """Load the fast tokenizer in `tokenizer_dir`; return it and its fingerprint for pregenerate.json."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        raise TensorslimError(f"cannot load a tokenizer from {tokenizer_dir}: {exc}",
                              "pass --tokenizer a directory saved by save_pretrained (with tokenizer.json or vocab.txt)") from None
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TensorslimError(f"tokenizer in {tokenizer_dir} is not a fast (Rust) tokenizer",
                              "save the model's fast tokenizer with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)")
    missing = [name for name in ("cls_token", "sep_token", "mask_token") if getattr(tokenizer, name + "_id", None) is None]
    if missing:
        raise TensorslimError(f"tokenizer in {tokenizer_dir} has no {', '.join(missing)}",
                              "use a BERT-style tokenizer with [CLS], [SEP] and [MASK]")
    return tokenizer, tokenizer_fingerprint(tokenizer, tokenizer_dir)


def tokenizer_fingerprint(tokenizer, tokenizer_dir=None) -> dict:
    """Class, vocabulary size and SHA-256 of the vocabulary (tokens in id order) of `tokenizer`."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
    info = {"class": type(tokenizer).__name__, "vocab_size": len(tokens), "vocab_sha256": digest}
    if tokenizer_dir is not None:
        info = {"path": str(Path(tokenizer_dir).resolve()), **info}
    return info


def _vocab_from(tokenizer) -> _Vocab:
    vocab = tokenizer.get_vocab()
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    reserved = re.compile(r"^\[.+\]$")
    is_cont = np.array([len(t) > 2 and t.startswith("##") for t in tokens], dtype=bool)
    random_ids = np.array([i for i, t in enumerate(tokens) if i not in special and t and not reserved.match(t)],
                          dtype=np.int64)
    return _Vocab(tokenizer.backend_tokenizer.to_str(), tokens, tokenizer.cls_token_id, tokenizer.sep_token_id,
                  tokenizer.mask_token_id, is_cont, random_ids)


# ----------------------------------------------------------------------------- the recipe

def _shard_seed(seed: int, epoch: int, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"tensorslim:{seed}:{epoch}:{shard}".encode()).digest()[:8], "little")


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """BERT's truncate_seq_pair: drop tokens from the front or back (coin flip) of the longer side."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _mask(tokens: list[int], config: PregenerateConfig, vocab: _Vocab, rng: random.Random):
    """Google's create_masked_lm_predictions; returns (masked tokens, sorted positions, labels)."""
    candidates: list[list[int]] = []
    specials = (vocab.cls_id, vocab.sep_id)
    for i, token in enumerate(tokens):
        if token in specials:
            continue
        if (config.whole_word_mask and candidates and candidates[-1][-1] == i - 1
                and vocab.is_continuation[token]):
            candidates[-1].append(i)
        else:
            candidates.append([i])
    num_to_predict = min(config.max_predictions_per_seq, max(1, int(round(len(tokens) * config.masked_lm_prob))))
    output = list(tokens)
    positions: list[int] = []
    for word in _shuffled(candidates, rng):
        if len(positions) >= num_to_predict:
            break
        if len(positions) + len(word) > num_to_predict:
            continue
        draw = rng.random()
        for index in word:
            if draw < 0.8:
                output[index] = vocab.mask_id
            elif draw >= 0.9:
                output[index] = int(vocab.random_ids[rng.randrange(len(vocab.random_ids))])
        positions.extend(word)
    positions.sort()
    return output, positions, [tokens[p] for p in positions]


def _shuffled(items: list, rng: random.Random) -> Iterator:
    """Yield `items` in random order, drawing only as many random numbers as items are taken."""
    for j in range(len(items)):
        k = rng.randrange(j, len(items))
        items[j], items[k] = items[k], items[j]
        yield items[j]


def _instances(docs: list[list[list[int]]], index: int, config: PregenerateConfig, vocab: _Vocab,
               rng: random.Random) -> Iterator[tuple]:
    """Google's create_instances_from_document for docs[index]; yields (tokens, segment ids, random_next)."""
    document = docs[index]
    max_tokens = config.max_seq_len - (3 if config.nsp else 2)
    target = rng.randint(2, max_tokens) if rng.random() < config.short_seq_prob else max_tokens
    chunk: list[list[int]] = []
    length, i = 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            if not config.nsp:
                a = [t for segment in chunk for t in segment]
                _truncate_pair(a, [], max_tokens, rng)
                yield [vocab.cls_id, *a, vocab.sep_id], [0] * (len(a) + 2), False
            else:
                real_segments = len(chunk)
                if real_segments == 1 and len(chunk[0]) >= 2:  # cut a lone sentence so it can have a real next
                    cut = rng.randint(1, len(chunk[0]) - 1)
                    chunk = [chunk[0][:cut], chunk[0][cut:]]
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for segment in chunk[:a_end] for t in segment]
                b: list[int] = []
                random_next = len(chunk) == 1 or rng.random() < 0.5
                if random_next:
                    target_b = target - len(a)
                    for _ in range(10):
                        other = rng.randint(0, len(docs) - 1)
                        if other != index:
                            break
                    other_doc = docs[other]
                    for j in range(rng.randint(0, len(other_doc) - 1), len(other_doc)):
                        b.extend(other_doc[j])
                        if len(b) >= target_b:
                            break
                    if real_segments > 1:
                        i -= len(chunk) - a_end  # put the unused segments back
                else:
                    b = [t for segment in chunk[a_end:] for t in segment]
                _truncate_pair(a, b, max_tokens, rng)
                tokens = [vocab.cls_id, *a, vocab.sep_id, *b, vocab.sep_id]
                yield tokens, [0] * (len(a) + 2) + [1] * (len(b) + 1), random_next
            chunk, length = [], 0
        i += 1


def _tokenize(documents: list[list[str]], tokenizer, max_tokens: int) -> list[list[list[int]]]:
    """Tokenize all sentences of a shard in batches; cut segments longer than max_tokens; drop empties."""
    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    for start in range(0, len(flat), 4096):
        ids += [e.ids for e in tokenizer.encode_batch(flat[start:start + 4096], add_special_tokens=False)]
    out, pos = [], 0
    for doc in documents:
        segments = []
        for seg in ids[pos:pos + len(doc)]:
            segments += [seg[k:k + max_tokens] for k in range(0, len(seg), max_tokens)]
        pos += len(doc)
        if segments:
            out.append(segments)
    return out


def _column(rows: list[list[int]], dtype, arrow_type) -> pa.Array:
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=arrow_type))


# ----------------------------------------------------------------------------- one shard (worker side)

_WORKER: dict = {}


def _init_worker(vocab: _Vocab, in_pool: bool) -> None:
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


def shard_files(out: Path, shard: int, epoch: int, formats: Iterable[str]) -> list[Path]:
    """The files one (epoch, shard) leaves: the Arrow shard and/or the JSON-lines part."""
    names = {"arrow": f"shard_{shard:05d}.arrow", "json": f"shard_{shard:05d}.jsonl"}
    return [out / f"epoch_{epoch}" / names[f] for f in formats]


def _process_shard(task: tuple) -> dict:
    """Build every epoch of one shard, write its files atomically and return its counts."""
    shard, documents, config, out = task
    vocab: _Vocab = _WORKER["vocab"]
    docs = _tokenize(documents, _WORKER["tokenizer"], config.max_seq_len - (3 if config.nsp else 2))
    record = {"shard": shard, "documents": len(documents), "epochs": []}
    for epoch in range(config.epochs):
        rng = random.Random(_shard_seed(config.seed, epoch, shard))
        rows = []
        for index in range(len(docs)):
            for tokens, segments, random_next in _instances(docs, index, config, vocab, rng):
                masked, positions, labels = _mask(tokens, config, vocab, rng)
                rows.append((masked, segments, positions, labels, random_next))
        rng.shuffle(rows)
        files = shard_files(out, shard, epoch, config.formats)
        for path in files:
            if path.suffix == ".arrow":
                _write_arrow(path, rows)
            else:
                _write_jsonl(path, rows, vocab)
        record["epochs"].append({
            "sequences": len(rows),
            "tokens": sum(len(r[0]) for r in rows),
            "masked": sum(len(r[2]) for r in rows),
            "random_next": sum(r[4] for r in rows),
            "bytes": {p.suffix[1:]: p.stat().st_size for p in files},
        })
    return record


def _write_arrow(path: Path, rows: list[tuple]) -> None:
    columns = [list(c) for c in zip(*rows)] if rows else [[]] * 5
    table = pa.Table.from_arrays([
        _column(columns[0], np.int32, pa.int32()),
        _column(columns[1], np.int8, pa.int8()),
        _column(columns[2], np.int32, pa.int32()),
        _column(columns[3], np.int32, pa.int32()),
        pa.array(columns[4], type=pa.bool_()),
    ], schema=SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(table)
    with atomic_file(path, "wb") as handle:
        handle.write(sink.getvalue().to_pybytes())


def _write_jsonl(path: Path, rows: list[tuple], vocab: _Vocab) -> None:
    tokens = vocab.tokens
    with atomic_file(path, "w", encoding="utf-8") as handle:
        for masked, segments, positions, labels, random_next in rows:
            handle.write(json.dumps({
                "tokens": [tokens[t] for t in masked], "segment_ids": segments, "is_random_next": random_next,
                "masked_lm_positions": positions, "masked_lm_labels": [tokens[t] for t in labels],
            }, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- orchestration (main side)

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


class _StopOnSignal:
    """First SIGINT/SIGTERM sets `stop` (finish in-flight shards); a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.stop = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        log.warning("%s received: finishing the shards in progress (send it again to abort now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _settings(config: PregenerateConfig, reader: CorpusReader, tokenizer_info: dict) -> dict:
    files = [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in reader.files]
    return {"config": dataclasses.asdict(config), "corpus_files": files, "tokenizer": tokenizer_info}


def _check_paths(out: Path, files: list[Path]) -> None:
    out = out.resolve()
    for path in files:
        path = path.resolve()
        if out == path or out in path.parents:
            raise TensorslimError(f"corpus file {path} lies inside the output directory {out}",
                                  "choose an --out outside the corpus")


def _prepare(out: Path, settings: dict, resume: bool, overwrite: bool) -> tuple[Path, dict[int, dict] | None]:
    """Set up the directory to write (`out`, or its build sibling when replacing an earlier `out`:
    see tensorslim.io); return it with the finished shards to skip, or None when a finished run matches."""
    work = build_path(out) if resume and (build_path(out) / STATE).exists() else out
    state, manifest = work / STATE, work / MANIFEST
    if resume and state.exists():
        if json.loads(state.read_text()) != settings:
            raise TensorslimError(f"{out} holds an interrupted run with different settings, corpus or tokenizer",
                                  "rerun with exactly the same arguments, or drop --resume to start over")
        _remove_temporaries(work)
        return work, _read_progress(work / PROGRESS)
    if resume and manifest.exists():
        previous = json.loads(manifest.read_text())
        if {k: previous.get(k) for k in settings} != settings:
            raise TensorslimError(f"{out} holds a finished run with different settings, corpus or tokenizer",
                                  "drop --resume to regenerate, or choose another --out")
        log.info("%s is already complete; nothing to do", out)
        return work, None
    if resume:
        log.info("nothing to resume in %s; starting a new run", out)
    check_output_dir(out, COMMAND, overwrite=overwrite or (resume and replacing(out, COMMAND)))
    work = begin_dir(out, COMMAND)
    write_json(work / STATE, settings)
    return work, {}


def _remove_temporaries(out: Path) -> None:
    """Delete the half-written files a killed run left in `out` and its epoch directories."""
    for directory in [out, *out.glob("epoch_*")]:
        remove_stale_temporaries(directory)


def _read_progress(path: Path) -> dict[int, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                done[record["shard"]] = record
    return done


def _is_done(out: Path, record: dict | None, config: PregenerateConfig) -> bool:
    """A shard counts as done if listed in the progress log and its files exist with the listed sizes."""
    if record is None:
        return False
    for epoch, counts in enumerate(record["epochs"]):
        for path in shard_files(out, record["shard"], epoch, config.formats):
            kind = path.suffix[1:]
            if kind == "jsonl" and (out / f"epoch_{epoch}.json").exists():
                continue  # parts already merged by an earlier, interrupted finalisation
            if not path.exists() or path.stat().st_size != counts["bytes"][kind]:
                return False
    return True


def pregenerate(corpus_paths, tokenizer_dir, out_dir, config: PregenerateConfig = PregenerateConfig(),
                workers: int = 1, resume: bool = False, overwrite: bool = False) -> Path:
    """Generate `config.epochs` epochs of masked-LM (+NSP) data from a corpus into `out_dir`.

    Output is identical for any `workers`; `resume=True` continues an interrupted run (same
    arguments) and skips its finished shards. SIGINT/SIGTERM stop at a shard boundary and raise
    KeyboardInterrupt. Returns the output directory.
    """
    if workers < 1:
        raise TensorslimError(f"workers={workers}", "use --workers 1 or more")
    out = Path(out_dir)
    check_output_dir(out, COMMAND, inputs=[*corpus_paths, tokenizer_dir],
                     overwrite=overwrite or (resume and replacing(out, COMMAND)))
    reader = CorpusReader(corpus_paths, config.corpus_layout, config.max_sentence_chars)
    _check_paths(out, reader.files)
    tokenizer, tokenizer_info = load_tokenizer(tokenizer_dir)
    if config.max_seq_len > tokenizer.model_max_length:
        raise TensorslimError(f"max_seq_len={config.max_seq_len} exceeds the tokenizer's model_max_length "
                              f"{tokenizer.model_max_length}", "use a smaller --max-seq-len")
    vocab = _vocab_from(tokenizer)
    if config.whole_word_mask and not vocab.is_continuation.any():
        raise TensorslimError(f"--whole-word-mask needs WordPiece '##' pieces; the tokenizer in {tokenizer_dir} has none",
                              "drop --whole-word-mask or use a BERT (WordPiece) tokenizer")
    documents = iter(reader)
    first = next(documents)  # an empty corpus fails here, before the output directory is touched
    settings = _settings(config, reader, tokenizer_info)
    final = out
    out, done = _prepare(final, settings, resume, overwrite)
    if done is None:
        return final

    records: dict[int, dict] = {}
    with open(out / PROGRESS, "a", encoding="utf-8") as progress, _StopOnSignal() as guard, \
            tqdm(desc="shards", unit="shard", disable=None) as bar:

        def finish(record: dict) -> None:
            records[record["shard"]] = record
            progress.write(json.dumps(record) + "\n")
            progress.flush()
            os.fsync(progress.fileno())
            bar.update(1)

        stopped = _run_shards(out, config, vocab, _shards(_prepend(first, documents), config.docs_per_shard),
                              done, workers, guard, finish, records, bar)
    if stopped:
        raise KeyboardInterrupt
    _finalize(out, config, settings, reader, [records[k] for k in sorted(records)])
    return finish_dir(out, final, COMMAND)


def _prepend(first, rest):
    yield first
    yield from rest


def _pool_context():
    """forkserver where available: the server imports this module once and forks workers from it,
    which never inherit the parent's threads. The server starts with TENSORSLIM_DATA_WORKER=1, so
    it skips the package's torch/transformers import (workers need tokenizers and pyarrow only):
    a pool is ready in well under a second instead of 4-5 s. Elsewhere, spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    from .. import DATA_WORKER_ENV

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    previous = os.environ.get(DATA_WORKER_ENV)
    os.environ[DATA_WORKER_ENV] = "1"
    try:
        forkserver.ensure_running()  # the server (and every worker) takes the environment from here
    finally:
        if previous is None:
            del os.environ[DATA_WORKER_ENV]
        else:
            os.environ[DATA_WORKER_ENV] = previous
    return context


def _run_shards(out, config, vocab, shards, done, workers, guard, finish, records, bar) -> bool:
    """Process shards in-process (workers=1) or in a process pool with at most 2 x workers in flight.

    Returns True when a signal stopped the run early (finished shards are recorded).
    """
    executor, in_flight, stopped = None, set(), False
    if workers == 1:
        _init_worker(vocab, in_pool=False)
    else:
        executor = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                                       initargs=(vocab, True))
    try:
        for shard, docs in shards:
            if guard.stop:
                stopped = True
                break
            if _is_done(out, done.get(shard), config):
                records[shard] = done[shard]
                bar.update(1)
                continue
            task = (shard, docs, config, out)
            if executor is None:
                finish(_process_shard(task))
                continue
            while len(in_flight) >= 2 * workers:
                in_flight = _collect(in_flight, finish)
            in_flight.add(executor.submit(_process_shard, task))
        while in_flight:
            in_flight = _collect(in_flight, finish)
    except BrokenProcessPool:
        raise TensorslimError("a worker process died (killed, or out of memory); finished shards are kept",
                              "rerun the same command with --resume, with fewer --workers or a smaller "
                              "--docs-per-shard if memory ran out") from None
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()
            executor = None
        raise
    finally:
        if executor is not None:
            executor.shutdown()
    return stopped


def _collect(in_flight: set, finish) -> set:
    """Wait (polling, so signals are handled) until some shards finish; record them; return the rest."""
    while True:
        finished, pending = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
        if finished:
            break
    for future in finished:
        finish(future.result())
    return pending


def _finalize(out: Path, config: PregenerateConfig, settings: dict, reader: CorpusReader, records: list[dict]) -> None:
    """Merge JSON parts, write per-epoch metrics, then pregenerate.json; drop the run-state files."""
    epochs = []
    for epoch in range(config.epochs):
        counts = [r["epochs"][epoch] for r in records]
        total = {key: sum(c[key] for c in counts) for key in ("sequences", "tokens", "masked", "random_next")}
        metrics = {
            "num_sequences": total["sequences"], "max_seq_len": config.max_seq_len,
            "num_documents": sum(r["documents"] for r in records), "num_shards": len(records),
            "num_tokens": total["tokens"], "num_masked_tokens": total["masked"],
            "num_random_next": total["random_next"],
            "mean_seq_len": round(total["tokens"] / max(1, total["sequences"]), 3),
        }
        entry = {"epoch": epoch, **metrics}
        if "arrow" in config.formats:
            write_json(out / f"epoch_{epoch}" / "metrics.json", metrics)
            entry["shards"] = [{"file": f"epoch_{epoch}/shard_{r['shard']:05d}.arrow",
                                "num_sequences": c["sequences"], "bytes": c["bytes"]["arrow"]}
                               for r, c in zip(records, counts)]
        if "json" in config.formats:
            _merge_json(out, epoch, records)
            write_json(out / f"epoch_{epoch}_metrics.json",
                       {"num_training_examples": total["sequences"], "max_seq_len": config.max_seq_len})
            entry["json"] = f"epoch_{epoch}.json"
        epochs.append(entry)
    stats = reader.stats
    manifest = {
        "format": MANIFEST_FORMAT,
        **settings,
        "corpus": {"documents": stats.documents, "sentences": stats.sentences, "layouts": stats.layouts},
        "num_shards": len(records),
        "epochs": epochs,
    }
    write_json(out / MANIFEST, manifest)
    for name in (STATE, PROGRESS):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    log.info("wrote %d epoch(s) x %d sequences in %d shard(s) to %s", config.epochs,
             epochs[0]["num_sequences"], len(records), out)


def _merge_json(out: Path, epoch: int, records: list[dict]) -> None:
    target = out / f"epoch_{epoch}.json"
    parts = [out / f"epoch_{epoch}" / f"shard_{r['shard']:05d}.jsonl" for r in records]
    if not target.exists():
        with atomic_file(target, "wb") as handle:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, handle)
    for part in parts:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    with contextlib.suppress(OSError):
        (out / f"epoch_{epoch}").rmdir()  # only when empty (--format json)


# ----------------------------------------------------------------------------- reading it back

def read_manifest(path) -> dict:
    """pregenerate.json of a finished output directory; TensorslimError if missing or incomplete."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        if (path / STATE).exists():
            raise TensorslimError(f"{path} holds an unfinished pre-generation run (no {MANIFEST})",
                                  "rerun the same `tensorslim pregenerate` command with --resume")
        raise TensorslimError(f"{path} is not a pre-generated data directory (no {MANIFEST})",
                              f"run `tensorslim pregenerate --out {path} ...` first")
    try:
        data = json.loads(manifest.read_text())
    except ValueError as exc:
        raise TensorslimError(f"{manifest} is not valid JSON: {exc}", "regenerate the data") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise TensorslimError(f"{manifest} has format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}",
                              "regenerate the data with this version of tensorslim")
    return data


def load_pregenerated(path, epoch: int | None = None):
    """Memory-map the Arrow shards of `path` as a `datasets.Dataset` (epoch None: all epochs in order).

    Columns: input_ids, token_type_ids, masked_lm_positions, masked_lm_labels, is_random_next.
    Checks pregenerate.json and every shard's size; raises TensorslimError when anything is missing.
    """
    from datasets import Dataset, concatenate_datasets

    path = Path(path)
    manifest = read_manifest(path)
    epochs = manifest["epochs"]
    if "shards" not in epochs[0]:
        raise TensorslimError(f"{path} holds only the release's JSON format, not Arrow shards",
                              "regenerate with --format arrow (or both)")
    if epoch is not None:
        if not 0 <= epoch < len(epochs):
            raise TensorslimError(f"epoch {epoch} requested but {path} holds epochs 0..{len(epochs) - 1}",
                                  "pass an epoch in that range, or None for all")
        epochs = [epochs[epoch]]
    parts = []
    for entry in epochs:
        for shard in entry["shards"]:
            file = path / shard["file"]
            if not file.is_file() or file.stat().st_size != shard["bytes"]:
                raise TensorslimError(f"shard {file} is missing or has the wrong size (expected {shard['bytes']} bytes)",
                                      "regenerate the data (the directory is incomplete or was modified)")
            parts.append(Dataset.from_file(str(file)))
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    expected = sum(e["num_sequences"] for e in epochs)
    if len(dataset) != expected:
        raise TensorslimError(f"{path} holds {len(dataset)} sequences, pregenerate.json lists {expected}",
                              "regenerate the data")
    return dataset
