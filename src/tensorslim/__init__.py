"""tensorslim: extreme parameter compression of BERT-family encoders (Ren et al., ICLR 2022).

Importing the package registers the decomposed student with transformers' Auto classes, so that
`AutoModelForSequenceClassification.from_pretrained(student_dir)` works after `import tensorslim`.
Data-worker processes (pregenerate's pool) set TENSORSLIM_DATA_WORKER=1 to skip that import of
torch and transformers (seconds per process); the names below are then loaded on first use.
"""

import importlib
import os

from .env import DATA_WORKER_ENV
from .errors import TensorslimError

_EXPORTS = {
    "DecomposedBertConfig": "modeling", "DecomposedBertModel": "modeling",
    "DecomposedBertForSequenceClassification": "modeling", "DecomposedBertForMaskedLM": "modeling",
    "decompose": "modeling.convert", "decompose_to_dir": "modeling.convert", "export_dense": "modeling.convert",
    "from_teacher": "modeling.convert",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if os.environ.get(DATA_WORKER_ENV) != "1":
    from . import modeling  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"
__all__ = ["TensorslimError", *_EXPORTS, "__version__"]
