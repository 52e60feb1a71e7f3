"""The decomposition section of a student's config.json, and the hook that rebuilds a student
inside transformers' own `from_pretrained`.

transformers reads `quantization_config` from config.json and, through a registered
`HfQuantizer`, lets a method replace modules after the model class is built and before its
weights load: exactly what a decomposed student needs. tensorslim registers itself as the
method "tensorslim" (public `register_quantization_config` / `register_quantizer`), so after
`import tensorslim` any `from_pretrained` of a student (Auto classes, the concrete class,
pipelines, lm-eval's HFLM) builds the teacher's own class with factored projections, and
`model.dequantize()` merges the factors back into dense weights. The model is not quantized in
any other sense: `is_quantized` is left False, so training, `.half()` and `.to()` behave as
for the dense class. Without `import tensorslim`, transformers warns that it does not know the
method and the projections load uninitialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

SECTION = "tensorslim"
INT8 = "tensorslim_int8"  # config.json's entry of an int8 model (`compress.int8`)


@dataclass
class DecompositionConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of a student: the method with its options, which
    projections (`ops`), each slice group's shape and ranks, and the projections of `ops` kept as
    dense modules (`merged`, e.g. by `compress.api.merge_where_faster`)."""

    method: str = "tucker"
    options: dict = field(default_factory=dict)
    ops: str = "all"
    groups: dict = field(default_factory=dict)  # name -> {rows, cols, num_slices, ranks}
    inference_chunk_tokens: int = 1024  # encoders on the CPU: groups of at most this many tokens (compress.chunking)
    merged: list = field(default_factory=list)  # "<layer>.<path>" of projections merged back to dense
    # {} = dense word embeddings; else {"rank", "tied" (the teacher's tie_word_embeddings), "init"}
    # (compress.embeddings)
    embeddings: dict = field(default_factory=dict)
    quant_method: str = SECTION

    def __post_init__(self):
        self.quant_method = SECTION

    def to_dict(self) -> dict:
        return {
            "quant_method": SECTION,
            "method": self.method,
            "options": dict(self.options),
            "ops": self.ops,
            "groups": {k: dict(v) for k, v in self.groups.items()},
            "inference_chunk_tokens": self.inference_chunk_tokens,
            "merged": list(self.merged),
            "embeddings": dict(self.embeddings),
        }


def section_of(config) -> DecompositionConfig | None:
    """The decomposition section of a model config (object or dict), or None for a dense model."""
    q = getattr(config, "quantization_config", None)
    if isinstance(q, DecompositionConfig):
        return q
    if isinstance(q, dict) and q.get("quant_method") == SECTION:
        return DecompositionConfig.from_dict(q)
    return None


def factored_embeddings(config) -> bool:
    """Whether a model config describes a student with factorised word embeddings."""
    section = section_of(config)
    return section is not None and bool(section.embeddings)


def int8_entry(config) -> dict | None:
    """The int8 entry of a model config (None: a float model)."""
    return getattr(config, INT8, None)


class DecompositionLoader(HfQuantizer):
    """Builds the factored structure before the weights load; merges on `dequantize()`."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model, **kwargs):
        from .inplace import apply_structure

        apply_structure(model, self.quantization_config)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        model.is_quantized = False  # factored, not quantized: Trainer, .half() and .to() as for the dense class
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True

    def _dequantize(self, model, dtype=None):
        from .inplace import merge

        return merge(model)


def register() -> None:
    """Make transformers know the "tensorslim" section (idempotent)."""
    if SECTION not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(SECTION)(DecompositionConfig)
    if SECTION not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(SECTION)(DecompositionLoader)
