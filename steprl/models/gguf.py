"""GGUF file -> plain Hugging Face model directory, once, cached by the file's content hash.

transformers reads GGUF (with the ``gguf`` package) and dequantizes it, but the loaded model keeps a
``quantization_config`` that makes ``save_pretrained`` refuse, and vLLM / FSDP2 want an ordinary
safetensors directory anyway. So the dequantized weights are moved into a fresh model built from the
same config without that entry and saved with the tokenizer (and its chat template) next to them.
Every later step loads the result exactly like a user's Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

BUILD_VERSION = 1  # bump when the conversion changes: the cache key includes it


class ModelSourceError(ValueError):
    """A model source (GGUF file, wheel) that cannot be turned into a model directory."""


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` into an fp32 Hugging Face directory at ``out_dir`` (must not exist)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(f"GGUF file {gguf_path} does not load ({type(e).__name__}: {first})") from e
    config = AutoConfig.for_model(
        **{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelSourceError(
            f"GGUF file {gguf_path}: dequantized weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_gguf_model(gguf_path: Path, name: str, cache_dir: Path) -> Path:
    """The cached plain directory for ``gguf_path`` (built atomically on first use)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelSourceError(f"GGUF file {gguf_path} does not exist")
    digest = file_sha256(gguf_path)[:16]
    target = cache_dir / "models" / f"{name}-{digest}-v{BUILD_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        convert_gguf(gguf_path, tmp / "out")
        try:
            os.rename(tmp / "out", target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
