"""Architectures as data (`table.FAMILIES`): which projections tensorslim decomposes, and where."""

from __future__ import annotations

from ..errors import TensorslimError
from .spec import Family, Projection, get_path, layers_of, set_path
from .table import BY_MODEL_TYPE, FAMILIES

SUPPORTED_MODEL_TYPES = tuple(BY_MODEL_TYPE)


def get_family(config) -> Family:
    """The family of a transformers config, or a clear refusal naming the supported types."""
    model_type = getattr(config, "model_type", None)
    if model_type not in BY_MODEL_TYPE:
        raise TensorslimError(
            f"model type {model_type!r} is not supported",
            f"tensorslim compresses models of type {', '.join(SUPPORTED_MODEL_TYPES)}; "
            "pass the directory of such a model",
        )
    return BY_MODEL_TYPE[model_type]


__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "Family",
    "Projection",
    "get_family",
    "get_path",
    "layers_of",
    "set_path",
]
