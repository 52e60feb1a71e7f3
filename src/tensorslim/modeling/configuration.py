"""DecomposedBertConfig: a BertConfig plus the decomposition (method, ranks, ops)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from ..decomposition.methods import get_method
from ..decomposition.stacking import ffn_multiple, ops_slots


@strict
class DecomposedBertConfig(BertConfig):
    r"""
    decomposition (`str`): "tucker" (paper's IV), "shared" (III) or "lowrank" (II).
    rank (`int`): d, the rank of the D x D sides.
    layer_rank (`int`, *optional*): l, the size of the matrix bank (tucker only).
    ops (`str`): which matrices are decomposed: "all", "san" (attention) or "ffn".
    embedding_type (`str`): "bert", or "roberta" for RoBERTa-style position ids.
    inference_chunk_tokens (`int`): CPU inference runs each layer on groups of whole sequences of at
        most this many tokens (at least one sequence); 0 runs the whole batch at once. Same outputs,
        but the (tokens, 4D) FFN activations stay in cache and under glibc's 32 MB mmap threshold,
        so they are not fresh zeroed pages on every call: 19-34% faster at batch 32 x 128 on
        an AMD EPYC (docs/results.md). Training and GPUs always run the whole batch.
    """

    model_type = "decomposed_bert"

    decomposition: str = "tucker"
    rank: int = 384
    layer_rank: int | None = 72
    ops: str = "all"
    embedding_type: str = "bert"
    inference_chunk_tokens: int = 1024

    @property
    def ffn_mult(self) -> int:
        return ffn_multiple(self.hidden_size, self.intermediate_size)

    @property
    def num_slices(self) -> int:
        """n = L x (slots in ops)."""
        return self.num_hidden_layers * len(ops_slots(self.ops, self.ffn_mult))

    @property
    def method(self):
        """The decomposition object (ranks included)."""
        return get_method(self.decomposition, self.rank, self.layer_rank)
