"""Model-side tensor helpers shared by the actor, reference and critic workers."""

from __future__ import annotations

import math

import torch

TensorDict = dict[str, torch.Tensor]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | < t)``; position 0 has no prediction and is 0."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    first = torch.zeros(picked.shape[0], 1, dtype=picked.dtype, device=picked.device)
    return torch.cat([first, picked], dim=1)  # as wide as input_ids, also for one-token rows


def shard_rows(data: TensorDict, num_shards: int) -> list[TensorDict]:
    """Split rows into ``num_shards`` equal parts; missing rows are padding with every mask False.

    Every data-parallel rank must run the same number of forward/backward passes (FSDP collectives),
    so shards are made equal and the padding rows contribute nothing to any loss.
    """
    rows = next(iter(data.values())).shape[0]
    per = max(1, math.ceil(rows / num_shards))
    shards = []
    for r in range(num_shards):
        idx = torch.arange(r * per, (r + 1) * per)
        real = idx < rows
        idx = torch.where(real, idx, torch.zeros_like(idx))
        shard = {}
        for key, value in data.items():
            v = value[idx]
            if key.endswith("_mask") and v.dtype == torch.bool:
                v = v & real.view(-1, *([1] * (v.dim() - 1)))
            shard[key] = v
        shard["row_is_real"] = real
        shards.append(shard)
    return shards


def micro_batches(data: TensorDict, num: int) -> list[TensorDict]:
    rows = next(iter(data.values())).shape[0]
    num = max(1, min(num, rows))
    bounds = torch.linspace(0, rows, num + 1).round().long().tolist()
    return [{k: v[bounds[i] : bounds[i + 1]] for k, v in data.items()} for i in range(num)]


def trim_padding(data: TensorDict) -> TensorDict:
    """Drop trailing columns that are padding in every row (less compute per micro-batch)."""
    length = int(data["attention_mask"].sum(-1).max().item()) if data["attention_mask"].any() else 1
    return {
        k: (v[:, :length] if v.dim() >= 2 and v.shape[1] == data["attention_mask"].shape[1] else v)
        for k, v in data.items()
    }
