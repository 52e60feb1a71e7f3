"""GGUF files (llama.cpp's format): recognising one where a transformers directory is expected, and
converting one once to an ordinary transformers directory.

transformers loads a GGUF dequantised to float32 (`from_pretrained(folder, gguf_file=name)`, for
the architectures its GGUF support covers) but refuses to `save_pretrained` that model ("quantized
with gguf"); the plain class built from its config without the GGUF `quantization_config`, holding
the same state dict, saves normally.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..errors import TensorslimError

log = logging.getLogger(__name__)

MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic bytes."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def gguf_in(path: str | Path) -> Path | None:
    """The GGUF file `path` is, or the first one a directory without config.json holds; else None."""
    path = Path(path)
    if path.is_file():
        return path if is_gguf(path) else None
    if path.is_dir() and not (path / "config.json").is_file():
        return next((p for p in sorted(path.glob("*.gguf")) if is_gguf(p)), None)
    return None


def conversion_fix(gguf: str | Path) -> str:
    """How to turn `gguf` into a directory tensorslim reads."""
    return (
        f'convert it once to a transformers directory: python -c "from tensorslim.data.gguf import convert_gguf; '
        f"convert_gguf('{gguf}', 'MODEL_DIR')\" (needs pip install gguf), then pass MODEL_DIR"
    )


def convert_gguf(gguf: str | Path, out: str | Path, command: str = "convert gguf") -> Path:
    """Write `out`: a transformers directory (config, float32 safetensors, tokenizer) of the causal LM
    in GGUF file `gguf`. Written atomically; an existing `out` is refused unless `command` wrote it."""
    gguf = Path(gguf)
    if not is_gguf(gguf):
        raise TensorslimError(f"{gguf} is not a GGUF file", "pass a .gguf file (it starts with the bytes GGUF)")
    if importlib.util.find_spec("gguf") is None:
        raise TensorslimError("reading GGUF files needs the gguf package", "pip install --no-deps gguf==0.19.0")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..io import atomic_dir, check_output_dir

    check_output_dir(out, command, inputs=[gguf])
    log.info("converting %s to a transformers directory at %s", gguf, out)
    folder, name = str(gguf.parent), gguf.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise TensorslimError(
            f"transformers cannot load {gguf}: {exc}",
            "convert a GGUF of an architecture transformers' GGUF support covers (llama, qwen2, mistral, ...)",
        ) from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    with atomic_dir(out, command, inputs=[gguf]) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)
