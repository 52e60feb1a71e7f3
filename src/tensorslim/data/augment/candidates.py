"""Replacement candidates from a masked LM, batched over every eligible single-piece word."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ...errors import TensorslimError
from .words import DEFAULT_BATCH_SIZE, DEFAULT_M

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without a GPU is a TensorslimError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TensorslimError(f"--device {device} requested but no CUDA GPU is available", "use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise TensorslimError(f"unknown device {device!r}", "use auto, cpu or cuda") from None


class MaskedLMCandidates:
    """Top-M masked-LM predictions for single-piece words, many masked sentences per forward pass.

    A query is (piece ids of the sentence, index of the piece to mask). Its input is
    ``[CLS] pieces-with-[MASK] [SEP] pieces [SEP]`` truncated to the model's maximum length, with
    token types 0 up to and including the first [SEP] and 1 after it (as TinyBERT). Queries are
    sorted by length and padded per batch; the LM head runs only at the masked positions.
    """

    def __init__(
        self,
        model,
        tokenizer,
        m: int = DEFAULT_M,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise TensorslimError(
                f"the masked LM's tokenizer {type(tokenizer).__name__} is not a fast tokenizer",
                "save the model with its fast (tokenizer.json) tokenizer",
            )
        self.model = model.to(device).eval()
        self.tokenizer, self.m, self.batch_size, self.device = tokenizer, m, batch_size, torch.device(device)
        limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_length = min(x for x in limits if isinstance(x, int) and x > 0)
        self.use_token_types = getattr(model.config, "type_vocab_size", 0) >= 2
        self.lowercase = bool(getattr(tokenizer, "do_lower_case", True))
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_tokens)
        prefix = getattr(getattr(tokenizer.backend_tokenizer, "model", None), "continuing_subword_prefix", None) or "##"
        #: Whether each output id may be a replacement: a token of the tokenizer that is not a word
        #: continuation, a special or an [unusedN] token (ids past the tokenizer, from padded vocabularies, are not).
        self.allowed = [
            not (t.startswith(prefix) or t in special or (t.startswith("[") and t.endswith("]"))) for t in vocab
        ]
        self.allowed += [False] * max(0, getattr(model.config, "vocab_size", 0) - len(vocab))
        self.vocab = vocab

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        m: int = DEFAULT_M,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ) -> MaskedLMCandidates:
        """Load a masked LM and its tokenizer from a directory; refuse one without a trained MLM head."""
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise TensorslimError(
                f"--mlm {path} is not a transformers model directory (no config.json)",
                "pass a directory saved with save_pretrained holding a masked LM, e.g. bert-base-uncased",
            )
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        head = [k for k in info.get("missing_keys", ()) if not k.startswith(model.base_model_prefix + ".")]
        if head:
            raise TensorslimError(
                f"the model in {path} has no trained masked-LM head (missing {sorted(head)[:3]} ...)",
                "pass a checkpoint with its MLM head (e.g. bert-base-uncased), "
                "or omit --mlm for GloVe-only augmentation",
            )
        return cls(model, AutoTokenizer.from_pretrained(path), m=m, batch_size=batch_size, device=device)

    def pieces(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[list[int]]]]:
        """Per sentence of words: (all piece ids, the positions of each word's pieces)."""
        encoding = self.tokenizer([list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False)
        out = []
        for index, words in enumerate(sentences):
            positions: list[list[int]] = [[] for _ in words]
            for position, word in enumerate(encoding.word_ids(index)):
                if word is not None:
                    positions[word].append(position)
            out.append((encoding["input_ids"][index], positions))
        return out

    def _input(self, ids: Sequence[int], position: int) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        masked = list(ids)
        masked[position] = tok.mask_token_id
        seq = ([tok.cls_token_id] + masked + [tok.sep_token_id] + list(ids) + [tok.sep_token_id])[: self.max_length]
        first = min(len(ids) + 2, len(seq))
        return seq, [0] * first + [1] * (len(seq) - first)

    @torch.inference_mode()
    def predict(self, queries: Sequence[tuple[Sequence[int], int]]) -> list[list[str]]:
        """Candidate words per query: the top-M predictions at the mask, minus disallowed tokens, best first.

        A query whose mask falls beyond the model's maximum length gets [] (as TinyBERT).
        """
        unique = list(dict.fromkeys((tuple(ids), pos) for ids, pos in queries))
        results: dict[tuple, list[str]] = {q: [] for q in unique}
        todo = sorted((q for q in unique if q[1] + 1 < self.max_length), key=lambda q: len(q[0]), reverse=True)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            inputs = [self._input(ids, pos) for ids, pos in batch]
            width = max(len(seq) for seq, _ in inputs)
            pad = self.tokenizer.pad_token_id or 0
            input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in inputs], device=self.device)
            types = torch.tensor([t + [0] * (width - len(t)) for _, t in inputs], device=self.device)
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in inputs], device=self.device)
            positions = torch.tensor([pos + 1 for _, pos in batch], device=self.device)
            logits = self._logits_at(input_ids, types, mask, positions)
            top = logits.topk(min(self.m, logits.shape[-1]), dim=-1).indices.tolist()
            for query, ids in zip(batch, top):
                results[query] = [self.vocab[i] for i in ids if self.allowed[i]]
        return [results[(tuple(ids), pos)] for ids, pos in queries]

    def _logits_at(self, input_ids, token_types, attention_mask, positions) -> torch.Tensor:
        """(batch, vocab) logits at one position per row; the LM head only sees those positions."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_types:
            kwargs["token_type_ids"] = token_types
        rows = torch.arange(len(positions), device=positions.device)
        head = getattr(self.model, "cls", None)
        head = getattr(self.model, "lm_head", None) if head is None else head
        if head is not None and self.model.base_model is not self.model:
            hidden = self.model.base_model(**kwargs)[0]
            return head(hidden[rows, positions]).float()
        return self.model(**kwargs).logits[rows, positions].float()
