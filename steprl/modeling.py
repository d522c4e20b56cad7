"""Model-side tensor helpers shared by the actor, reference and critic workers."""

from __future__ import annotations

import math
from typing import Any

import torch

TensorDict = dict[str, torch.Tensor]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: int = 1) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | < t)`` for ``t >= start``; earlier columns are 0.

    ``logits`` are the model's logits at positions ``start - 1 .. L - 1`` (``logits_to_keep=L - start + 1``;
    all positions when ``start == 1``): the prompt's logits are never computed when nothing reads them.
    """
    length = input_ids.shape[1]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, input_ids[:, start:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (length - picked.shape[1], 0))  # as wide as input_ids


def first_used_column(mask: torch.Tensor) -> int:
    """The first column any row of ``mask`` covers, at least 1 (column 0 has no prediction); the width
    if none does. Log-probs are needed from there on only (the response, not the prompt)."""
    cols = mask.any(0).nonzero()
    return max(1, int(cols[0])) if len(cols) else mask.shape[1]


def auto_threads(threads: int, ranks: int) -> int:
    """``threads`` if set, else this process's cores divided by the ranks that share them (at least 1).

    Stages run one after another (rollout, then each group's forward/update), so a group's ranks may use
    every core of the node while they run; one thread per rank left half the cores idle on a 1-rank group.
    """
    if threads > 0:
        return threads
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, ranks))


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


PASS_BUDGET_BYTES = 2 << 30  # what one auto-sized forward/backward pass may hold in activations and logits


def auto_micro_batch_tokens(hf_config: Any, vocab_logits: bool, budget_bytes: int = PASS_BUDGET_BYTES) -> int:
    """Tokens per pass so that the saved activations of one forward/backward fit ``budget_bytes``.

    Per token, in fp32: each decoder layer keeps about ``8 * hidden + 4 * intermediate`` values for the
    backward (norms, q/k/v/o, the MLP's gate, up, activation and product), and a language-model head keeps
    the logits and their gradient, ``2 * vocab``. SmolLM2-135M: about 1.7 MB per token, so ~1,300 tokens
    per 2 GiB pass; a mini-batch of 32 rows of 700 tokens in one pass needed ~37 GB (the worker was killed).
    """
    hidden = int(getattr(hf_config, "hidden_size", 0) or 0)
    inter = int(getattr(hf_config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(hf_config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(hf_config, "vocab_size", 0) or 0) if vocab_logits else 0
    per_token = 4 * (layers * (8 * hidden + 4 * inter) + 2 * vocab)
    return max(1, budget_bytes // max(per_token, 1))


def passes_needed(data: TensorDict, max_tokens: int) -> int:
    """How many row chunks keep each pass at ``max_tokens`` (rows x width) or fewer, at least 1."""
    rows = next(iter(data.values())).shape[0]
    width = max(
        (v[0].numel() for k, v in data.items() if k.endswith("input_ids") and v.dim() >= 2), default=1
    )
    return max(1, min(rows, math.ceil(rows * width / max(max_tokens, 1))))


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
