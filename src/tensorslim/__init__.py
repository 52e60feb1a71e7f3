"""tensorslim: extreme parameter compression of BERT-family encoders (Ren et al., ICLR 2022).

Public API: the student model classes (registered with transformers' Auto classes on import) and
`from_teacher` / `export_dense` to build and unbuild them.
"""

from .errors import TensorslimError

__version__ = "0.1.0"
__all__ = ["TensorslimError", "__version__"]
