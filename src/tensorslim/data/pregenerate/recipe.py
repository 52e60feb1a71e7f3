"""BERT's masked-LM + next-sentence recipe on the tokenized documents of one shard.

Google's `create_pretraining_data.py` (as used by TinyBERT's `pregenerate_training_data.py`):
documents are cut into chunks of sentences close to a target length (`max_seq_len - 3`, or a random
shorter one with probability `short_seq_prob`); each chunk becomes `[CLS] A [SEP] B [SEP]` where B
continues A or, 50% of the time, is taken from another document of the same shard
(`is_random_next`). Unlike Google's code, a chunk of a single sentence (e.g. the end of a document)
is cut in two rather than always given a random next, so the share stays at 50%. The pair is
truncated to fit by dropping tokens from the front or back of the longer side. Then
`min(max_predictions_per_seq, round(len * masked_lm_prob))` positions (never [CLS]/[SEP]) are
chosen; each chosen word becomes [MASK] 80% of the time, stays 10% and becomes a random vocabulary
token 10%. With `whole_word_mask` all WordPiece pieces of a word are chosen together and share that
80/10/10 decision. `nsp=False` builds single sequences `[CLS] A [SEP]`.

Every (epoch, shard) has its own RNG seeded from (seed, epoch, shard), so the output does not
depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

from .config import PregenerateConfig
from .vocab import Vocab


def epoch_rows(
    docs: list[list[list[int]]], shard: int, epoch: int, config: PregenerateConfig, vocab: Vocab
) -> list[tuple]:
    """Every sequence of one (epoch, shard), shuffled: (masked token ids, segment ids, masked positions,
    original ids at those positions, is_random_next)."""
    rng = random.Random(_shard_seed(config.seed, epoch, shard))
    rows = []
    for index in range(len(docs)):
        for tokens, segments, random_next in _instances(docs, index, config, vocab, rng):
            masked, positions, labels = _mask(tokens, config, vocab, rng)
            rows.append((masked, segments, positions, labels, random_next))
    rng.shuffle(rows)
    return rows


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


def _mask(tokens: list[int], config: PregenerateConfig, vocab: Vocab, rng: random.Random):
    """Google's create_masked_lm_predictions; returns (masked tokens, sorted positions, labels)."""
    candidates: list[list[int]] = []
    specials = (vocab.cls_id, vocab.sep_id)
    for i, token in enumerate(tokens):
        if token in specials:
            continue
        if config.whole_word_mask and candidates and candidates[-1][-1] == i - 1 and vocab.is_continuation[token]:
            candidates[-1].append(i)
        else:
            candidates.append([i])
    num_to_predict = min(config.max_predictions_per_seq, max(1, round(len(tokens) * config.masked_lm_prob)))
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


def _instances(
    docs: list[list[list[int]]], index: int, config: PregenerateConfig, vocab: Vocab, rng: random.Random
) -> Iterator[tuple]:
    """Google's createinstances_from_document for docs[index]; yields (tokens, segment ids, random_next)."""
    document = docs[index]
    max_tokens = config.max_tokens
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


def tokenize(documents: list[list[str]], tokenizer, max_tokens: int) -> list[list[list[int]]]:
    """Tokenize all sentences of a shard in batches; cut segments longer than max_tokens; drop empties."""
    flat = [s for doc in documents for s in doc]
    ids: list[list[int]] = []
    for start in range(0, len(flat), 4096):
        ids += [e.ids for e in tokenizer.encode_batch(flat[start : start + 4096], add_special_tokens=False)]
    out, pos = [], 0
    for doc in documents:
        segments = []
        for seg in ids[pos : pos + len(doc)]:
            segments += [seg[k : k + max_tokens] for k in range(0, len(seg), max_tokens)]
        pos += len(doc)
        if segments:
            out.append(segments)
    return out
