"""Model-side tensor helpers shared by the actor, reference and critic workers."""

from __future__ import annotations

import math
from typing import Any

import torch

TensorDict = dict[str, torch.Tensor]


class _PickedLogprob(torch.autograd.Function):
    """``log_softmax(logits)[..., ids]``, keeping only the log-softmax for the backward.

    Autograd's ``log_softmax`` then ``gather`` makes the backward allocate a zero-filled vocabulary-wide
    tensor to scatter into and then another for the log-softmax gradient; here the gradient is
    ``onehot(ids) * g - softmax * g``, written into one tensor (``exp`` of the saved log-softmax).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(logp, ids)
        return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, ids = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        out = logp.exp().mul_(-grad)
        return out.scatter_add_(-1, ids.unsqueeze(-1), grad), None


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: int = 1) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t] | < t)`` for ``t >= start``; earlier columns are 0.

    ``logits`` are the model's logits at positions ``start - 1 .. L - 2`` (what :func:`kept_positions`
    keeps: the prompt's logits are never computed when nothing reads them, nor the last position's), or
    at ``start - 1 .. L - 1`` (``start == 1``: all positions), the last then dropped.
    """
    length = input_ids.shape[1]
    if logits.shape[1] == length - start + 1:
        logits = logits[:, :-1]
    picked = _PickedLogprob.apply(logits.float().contiguous(), input_ids[:, start:])
    return torch.nn.functional.pad(picked, (length - picked.shape[1], 0))  # as wide as input_ids


def kept_positions(width: int, keep_from: int, offset: int = 0) -> torch.Tensor:
    """``logits_to_keep`` for the logits at columns ``keep_from .. width - 2`` of a row ``width`` wide
    whose model input starts at column ``offset``: the positions that predict a token of the row."""
    return torch.arange(keep_from - offset, width - 1 - offset)


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


def balanced_order(lengths: list[int], num_shards: int, num_groups: int = 1) -> list[int]:
    """A slot -> row order for :func:`shard_rows` under which every shard holds about as many tokens as
    the others, while the rows that form each mini-batch stay the same.

    Without it shard ``r`` holds rows ``r*per .. (r+1)*per - 1`` in position order, and episodes of one
    task (like lengths) sit together, so one rank may compute while the other waits at the collective.
    A shard's rows are split into ``num_groups`` chunks (``row_bounds(per, num_groups)``, its mini-batches);
    mini-batch ``k`` is chunk ``k`` of every shard. Here the rows of each mini-batch are dealt again,
    longest first, each to the shard with the fewest tokens so far that still has a free slot in chunk
    ``k``. Slots past ``len(lengths)`` are padding rows (no tokens). The result is a permutation of
    ``range(num_shards * per)``; the identity order is what :func:`shard_rows` does without one.
    """
    rows, num_shards = len(lengths), max(1, num_shards)
    per = max(1, math.ceil(rows / num_shards))
    order = list(range(num_shards * per))
    for a, b in row_bounds(per, num_groups):
        members = [r * per + j for r in range(num_shards) for j in range(a, b)]
        members.sort(key=lambda i: (-(lengths[i] if i < rows else -1), i))  # padding last, ties by position
        load, filled = [0] * num_shards, [0] * num_shards
        for i in members:
            shard = min((s for s in range(num_shards) if filled[s] < b - a), key=lambda s: (load[s], s))
            order[shard * per + a + filled[shard]] = i
            filled[shard] += 1
            load[shard] += lengths[i] if i < rows else 0
    return order


def shard_rows(data: TensorDict, num_shards: int, order: list[int] | None = None) -> list[TensorDict]:
    """Split rows into ``num_shards`` equal parts; missing rows are padding with every mask False.

    Every data-parallel rank must run the same number of forward/backward passes (FSDP collectives),
    so shards are made equal and the padding rows contribute nothing to any loss. ``order`` (from
    :func:`balanced_order`): slot ``s`` of the concatenated shards holds row ``order[s]`` (padding if
    ``>= rows``); by default slot ``s`` holds row ``s``.
    """
    rows = next(iter(data.values())).shape[0]
    per = max(1, math.ceil(rows / num_shards))
    slots = torch.arange(num_shards * per) if order is None else torch.as_tensor(order, dtype=torch.long)
    if slots.shape[0] != num_shards * per:
        raise ValueError(
            f"shard_rows: order has {slots.shape[0]} slots, {num_shards} shards need {num_shards * per}"
        )
    shards = []
    for r in range(num_shards):
        idx = slots[r * per : (r + 1) * per]
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
# On a CPU, passes of more tokens than this run slower per token: with episode-like lengths (prompt plus
# 40-320 response tokens) the embedded model's 2-rank update and log-prob forward were 1.2x faster in
# passes of at most 2,500 tokens than in one pass per mini-batch (2,048-3,000 did about as well).
CPU_PASS_TOKENS = 2500


def auto_micro_batch_tokens(
    hf_config: Any, vocab_logits: bool, budget_bytes: int = PASS_BUDGET_BYTES, device: str = "cuda"
) -> int:
    """Tokens per pass so that the saved activations of one forward/backward fit ``budget_bytes``, and on
    a CPU at most :data:`CPU_PASS_TOKENS` (smaller passes stay in cache).

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
    tokens = max(1, budget_bytes // max(per_token, 1))
    return min(tokens, CPU_PASS_TOKENS) if device == "cpu" else tokens


def passes_needed(data: TensorDict, max_tokens: int, shared_prefix: int = 0) -> int:
    """How many row chunks keep each pass at ``max_tokens`` (rows x width) or fewer, at least 1. With a
    ``shared_prefix`` computed once per pass (:func:`prefix_shared_forward`), a pass of ``k`` rows costs
    ``shared_prefix + k x (width - shared_prefix)``."""
    rows = next(iter(data.values())).shape[0]
    width = max(
        (v[0].numel() for k, v in data.items() if k.endswith("input_ids") and v.dim() >= 2), default=1
    )
    prefix = min(max(shared_prefix, 0), width - 1)
    per_pass = max(1, (max(max_tokens, 1) - prefix) // (width - prefix)) if width > prefix else rows
    return max(1, min(rows, math.ceil(rows / per_pass)))


def length_sorted_passes(
    lengths: list[int], max_tokens: int, shared_prefix: int = 0, num_passes: int = 0
) -> list[list[int]]:
    """Row indices for each pass: rows longest first, a pass filled while it stays within ``max_tokens``
    (``shared_prefix + rows x (width - shared_prefix)``, its width that of its first row).

    A pass is as wide as its longest row, so putting rows of like length together cuts the padding that
    rows of an episode batch (prompt plus 40-320 response tokens) otherwise carry. The passes' gradients
    and outputs do not depend on the grouping. ``num_passes``: split the costliest passes until there
    are that many (data-parallel ranks must run the same count); a row that alone exceeds the budget
    gets a pass of its own.
    """
    prefix = max(shared_prefix, 0)

    def cost(group: list[int]) -> int:
        return prefix + len(group) * max(lengths[group[0]] - prefix, 1)

    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and cost(groups[-1] + [row]) <= max_tokens:
            groups[-1].append(row)
        else:
            groups.append([row])
    while len(groups) < min(num_passes, len(lengths)):
        widest = max((g for g in groups if len(g) > 1), key=cost)
        at = groups.index(widest)
        half = len(widest) // 2
        groups[at : at + 1] = [widest[:half], widest[half:]]
    return groups


def pass_rows(
    data: TensorDict, max_tokens: int, shared_prefix: int = 0, num_passes: int = 0
) -> list[list[int]]:
    """Row indices for each forward/backward pass over ``data``: :func:`length_sorted_passes` over the
    rows' lengths; contiguous chunks of equal width for rows without ``input_ids`` (preference groups'
    ``cand_input_ids``, several sequences per row)."""
    if "input_ids" in data and "attention_mask" in data:
        return length_sorted_passes(
            data["attention_mask"].sum(-1).tolist(), max_tokens, shared_prefix, num_passes
        )
    rows = next(iter(data.values())).shape[0]
    return [list(range(a, b)) for a, b in row_bounds(rows, max(num_passes, passes_needed(data, max_tokens)))]


def row_bounds(rows: int, num: int) -> list[tuple[int, int]]:
    """``num`` (1 to ``rows``) contiguous row ranges of near-equal size, as (start, end)."""
    num = max(1, min(num, rows))
    bounds = torch.linspace(0, rows, num + 1).round().long().tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def micro_batches(data: TensorDict, num: int) -> list[TensorDict]:
    rows = next(iter(data.values())).shape[0]
    return [{k: v[a:b] for k, v in data.items()} for a, b in row_bounds(rows, num)]


def trim_padding(data: TensorDict, min_width: int = 1) -> TensorDict:
    """Drop trailing columns that are padding in every row (less compute per micro-batch), keeping at
    least ``min_width`` (a pass that continues a shared prefix needs a column past it)."""
    length = int(data["attention_mask"].sum(-1).max().item()) if data["attention_mask"].any() else 1
    length = min(max(length, min_width), data["attention_mask"].shape[1])
    return {
        k: (v[:, :length] if v.dim() >= 2 and v.shape[1] == data["attention_mask"].shape[1] else v)
        for k, v in data.items()
    }


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Columns at the start where every row holds the same attended token (the system prompt and tool
    schemas every episode of a batch begins with). Rows attending to nothing (padding rows that even out
    the ranks' shards) do not count; with fewer than two other rows nothing is shared."""
    alive = attention_mask.bool().any(1)
    if int(alive.sum()) < 2:
        return 0
    ids, mask = input_ids[alive], attention_mask[alive].bool()
    same = (ids == ids[:1]).all(0) & mask.all(0)
    differs = (~same).nonzero()
    return int(differs[0]) if len(differs) else ids.shape[1]


def usable_prefix(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_from: int | None = None, min_prefix: int = 16
) -> int:
    """The shared prefix :func:`prefix_shared_forward` may run once: at most ``keep_from`` (every position
    asked for comes from the second pass) and shorter than the width; 0 if under ``min_prefix``."""
    prefix = shared_prefix_length(input_ids, attention_mask)
    if keep_from is not None:
        prefix = min(prefix, keep_from)
    return prefix if min_prefix <= prefix < input_ids.shape[1] else 0


class _JoinGraph(torch.autograd.Function):
    """``tail`` itself, with ``other`` joined to its graph: the backward gives ``other`` a zero gradient,
    so it runs through ``other``'s graph too (an ``x + 0 * other.sum()`` without a vocabulary-wide add)."""

    @staticmethod
    def forward(ctx, tail: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        ctx.other_shape, ctx.other_dtype = other.shape, other.dtype
        return tail.view_as(tail)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad.new_zeros(ctx.other_shape, dtype=ctx.other_dtype)


def prefix_shared_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep_from: int | None = None,
    prefix: int | None = None,
) -> torch.Tensor:
    """The model's logits (``[B, L - 1 - keep_from, V]`` at columns ``keep_from .. L - 2``: those that
    predict a token of the row, else all ``[B, L, V]``), with the rows' shared prefix run once instead of
    once per row.

    Causal attention makes the prefix's keys and values the same in every row, so they are computed on
    one row and repeated along the batch as the cache of the rest; the gradient reaches the prefix
    through that cache, summed over rows. Same numbers as the plain forward up to float summation order
    (``tests/test_prefix_sharing.py``). ``prefix``: the columns to share (default :func:`usable_prefix`;
    data-parallel ranks must agree on sharing or not, as it changes how often the model is called);
    0 is the plain forward.
    """
    from transformers import DynamicCache

    width = input_ids.shape[1]
    if prefix is None:
        prefix = usable_prefix(input_ids, attention_mask, keep_from)
    if prefix <= 0:
        keep = {} if keep_from is None else {"logits_to_keep": kept_positions(width, keep_from)}
        return model(input_ids=input_ids, attention_mask=attention_mask, **keep).logits
    alive = attention_mask.bool().any(1)
    if not bool(alive.all()):  # padding rows see the prefix too: their outputs are never read
        attention_mask = attention_mask.clone()
        attention_mask[~alive, :prefix] = 1
    first = int(alive.nonzero()[0])
    cache = DynamicCache()  # filled in place (token-classification heads do not return it)
    head = model(
        input_ids=input_ids[first : first + 1, :prefix],
        attention_mask=attention_mask[first : first + 1, :prefix],
        past_key_values=cache,
        use_cache=True,
        **({} if keep_from is None else {"logits_to_keep": 1}),  # the prefix's logits are not read
    )
    if cache.get_seq_length() != prefix:
        raise RuntimeError(
            f"{type(model).__name__} did not fill the key/value cache: prefix sharing needs it"
        )
    cache.batch_repeat_interleave(input_ids.shape[0])
    keep = {} if keep_from is None else {"logits_to_keep": kept_positions(width, keep_from, prefix)}
    tail = model(
        input_ids=input_ids[:, prefix:],
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
        **keep,
    ).logits
    if keep_from is not None:
        # the prefix pass's output joins the graph (times 0) so that its backward runs through every
        # layer's output: FSDP2 gathers a layer's parameters for backward there, not on the cache path
        return _JoinGraph.apply(tail, head.logits)
    return torch.cat([head.logits.expand(input_ids.shape[0], -1, -1), tail], dim=1)
