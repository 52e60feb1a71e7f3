"""The decomposed student; importing this registers it with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration import DecomposedBertConfig
from .modeling import (
    DecomposedBertForMaskedLM,
    DecomposedBertForSequenceClassification,
    DecomposedBertModel,
    DecomposedBertPreTrainedModel,
)

AutoConfig.register(DecomposedBertConfig.model_type, DecomposedBertConfig, exist_ok=True)
AutoModel.register(DecomposedBertConfig, DecomposedBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(DecomposedBertConfig, DecomposedBertForSequenceClassification, exist_ok=True)
AutoModelForMaskedLM.register(DecomposedBertConfig, DecomposedBertForMaskedLM, exist_ok=True)

__all__ = ["DecomposedBertConfig", "DecomposedBertModel", "DecomposedBertForSequenceClassification",
           "DecomposedBertForMaskedLM", "DecomposedBertPreTrainedModel"]
