"""`PregenerateConfig`: every setting of the masked-LM recipe and of the output, checked on creation."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import TensorslimError
from ..corpus import LAYOUTS

FORMATS = ("arrow", "json", "both")


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
            (self.max_seq_len >= 8, f"max_seq_len={self.max_seq_len}", "use --max-seq-length 8 or more (BERT: 128)"),
            (0.0 <= self.short_seq_prob <= 1.0, f"short_seq_prob={self.short_seq_prob}", "use a probability in [0, 1]"),
            (0.0 < self.masked_lm_prob < 1.0, f"masked_lm_prob={self.masked_lm_prob}", "use a probability in (0, 1)"),
            (
                self.max_predictions_per_seq >= 1,
                f"max_predictions_per_seq={self.max_predictions_per_seq}",
                "use --max-predictions-per-seq 1 or more",
            ),
            (
                self.docs_per_shard >= (2 if self.nsp else 1),
                f"docs_per_shard={self.docs_per_shard}",
                "use --docs-per-shard 2 or more: random next sentences come from another document of the shard",
            ),
            (self.format in FORMATS, f"format={self.format!r}", f"use one of {', '.join(FORMATS)}"),
            (
                self.corpus_layout in LAYOUTS,
                f"corpus_layout={self.corpus_layout!r}",
                f"use one of {', '.join(LAYOUTS)}",
            ),
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

    @property
    def max_tokens(self) -> int:
        """Tokens of text a sequence holds: max_seq_len less [CLS] and one [SEP] per segment."""
        return self.max_seq_len - (3 if self.nsp else 2)
