"""tensorslim: extreme parameter compression of BERT-family encoders (Ren et al., ICLR 2022).

Importing the package registers the decomposed student with transformers' Auto classes, so that
`AutoModelForSequenceClassification.from_pretrained(student_dir)` works after `import tensorslim`.
"""

from .errors import TensorslimError
from .modeling import (
    DecomposedBertConfig,
    DecomposedBertForMaskedLM,
    DecomposedBertForSequenceClassification,
    DecomposedBertModel,
)
from .modeling.convert import decompose, decompose_to_dir, export_dense, from_teacher

__version__ = "0.1.0"
__all__ = [
    "TensorslimError", "DecomposedBertConfig", "DecomposedBertModel", "DecomposedBertForSequenceClassification",
    "DecomposedBertForMaskedLM", "decompose", "decompose_to_dir", "export_dense", "from_teacher", "__version__",
]
