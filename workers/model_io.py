"""Preparing a loaded model for training and exporting its weights: no dropout, LoRA merged into plain
Hugging Face names, safetensors written atomically. Used by the FSDP2 workers and the rollout worker's
weight receiver."""

from __future__ import annotations

import os

import torch

from steprl.config import ModelConfig


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout of ``model`` set to 0. The updates compare a training-mode forward with log-probs
    and values taken in eval mode (the PPO ratio, the clipped value loss): a dropout makes them differ at
    the first step. Hugging Face token-classification heads, the critic, put a 0.1 dropout before the
    value head unless the config names another rate."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def write_safetensors(state: dict[str, torch.Tensor], directory: str) -> None:
    """``directory/model.safetensors`` from a full state dict, atomically (written, then renamed).

    Tensors that share storage (tied embeddings) are written as copies under every name: safetensors
    refuses shared storage, and vLLM's in-place ``reload_weights`` on CPU keeps serving the old output
    projection when ``lm_head.weight`` is missing from the files.
    """
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone().contiguous() if ptr in seen else value.contiguous()
        seen.add(ptr)
    tmp = os.path.join(directory, "model.safetensors.tmp")
    save_file(out, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(directory, "model.safetensors"))


def merge_lora(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Fold LoRA adapters into base weights and return plain Hugging Face names (W + s * B @ A)."""
    scale = cfg.lora_alpha / cfg.lora_rank
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix("base_model.model.")
        if ".base_layer." in name:
            prefix = key.replace(".base_layer.weight", "").replace(".base_layer.bias", "")
            name = name.replace(".base_layer", "")
            if key.endswith(".weight"):
                a, b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
                value = value + scale * (b.float() @ a.float()).to(value.dtype)
        merged[name] = value
    return merged
