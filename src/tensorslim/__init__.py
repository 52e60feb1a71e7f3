"""tensorslim: compress transformers models by cross-layer tensor decomposition and distillation
(Ren et al., ICLR 2022, extended to any family in `tensorslim.families`).

Importing the package registers the "tensorslim" section of config.json with transformers, so
that after `import tensorslim` any `from_pretrained` of a student directory (Auto classes or the
model's own class) rebuilds the student. Data-worker processes (pregenerate's pool) set
TENSORSLIM_DATA_WORKER=1 to skip that import of torch and transformers; the names below are then
loaded on first use.
"""

import importlib
import os

from .env import DATA_WORKER_ENV
from .errors import TensorslimError

_EXPORTS = {
    "decompose": "compress.api",
    "decompose_to_dir": "compress.api",
    "export_dense": "compress.api",
    "from_teacher": "compress.api",
    "load_model": "compress.loading",
    "merge_where_faster": "compress.api",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if os.environ.get(DATA_WORKER_ENV) != "1":
    from . import compress  # noqa: F401  (registers the config section with transformers)

__version__ = "0.1.0"
__all__ = ["TensorslimError", *_EXPORTS, "__version__"]
