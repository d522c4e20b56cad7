"""Loss functions on [B, T] tensors: clipped PPO policy loss, clipped value loss, entropy, KL.

All losses reduce a per-token loss matrix with :func:`aggregate`. The default is
``"token-mean"``: the sum over every valid token of the batch divided by the number of valid
tokens, so each token weighs the same whatever the length of its sequence. The alternative
``"seq-mean-token-mean"`` (mean per sequence, then mean over sequences) divides each token by its
own sequence length: tokens of long sequences get less weight, so a long wrong answer is pushed
down less per token than a short one and the policy drifts towards long failures (the length
bias pointed out by Dr. GRPO, Liu et al. 2025, and avoided by DAPO's token-level loss). In an
agent the policy controls the number of steps, so the same bias appears per step: see
``tests/test_algorithms.py::test_per_step_normalization_bias``.

Log-prob tensors are aligned with tokens: ``logprobs[b, t] = log p(token t | < t)``.
"""

from __future__ import annotations

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_KINDS = ("k1", "k2", "k3", "abs")
_LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps ratios finite when a log-prob is badly off


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over ``mask``; 0 (not NaN) when the mask is empty."""
    m = mask.to(x.dtype)
    denom = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, mask, dim) / denom.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over ``mask`` (Bessel-corrected by default, as trl does)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over ``mask``: how much of its targets the critic
    predicts before its update (1 perfect, 0 no better than their mean, below 0 worse); nan if the
    targets do not vary."""
    var_returns = float(masked_var(returns, mask, unbiased=False))
    if not mask.any() or var_returns <= 0.0:
        return float("nan")
    return 1.0 - float(masked_var(returns - values, mask, unbiased=False)) / var_returns


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``mask`` (trl/verl semantics); 0 outside the mask.

    With ``shift_mean=False`` the mean is added back (scale only).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce a [B, T] loss matrix over ``mask`` to a scalar (see the module docstring)."""
    m = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq_sum = (loss_mat * m).sum(dim=-1)
    n_tok = m.sum(dim=-1)
    has_tok = n_tok > 0
    if mode == "seq-mean-token-mean":
        seq = seq_sum / n_tok.clamp(min=1.0)
    elif mode == "seq-mean-token-sum":
        seq = seq_sum
    else:
        raise ValueError(f"unknown aggregation {mode!r}; known: {AGG_MODES}")
    return masked_mean(seq, has_tok)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO surrogate ``max(-A r, -A clip(r, 1-clip_low, 1+clip_high))``.

    ``is_weights`` (no gradient) multiply each token's loss: the truncated importance weights of
    rollouts sampled by an older policy (``steprl.algorithms.off_policy``, asynchronous rollouts).

    ``dual_clip`` = c > 1 (Ye et al. 2020) additionally caps the loss at ``-A c`` for A < 0, so one
    token whose ratio exploded cannot dominate the batch. Metrics: ``clipfrac`` (fraction of
    tokens where the clipped branch is active), ``approx_kl`` (k3 estimate of KL(old || new)),
    ``dual_clipfrac`` when dual clipping is on.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(loss_unclipped, loss_clipped)
    metrics: dict[str, float] = {}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        capped = torch.minimum(loss_mat, -advantages * dual_clip)
        dual_active = (advantages < 0) & (loss_mat > -advantages * dual_clip)
        loss_mat = torch.where(advantages < 0, capped, loss_mat)
        metrics["dual_clipfrac"] = float(masked_mean(dual_active.float(), mask))
    if is_weights is not None:
        loss_mat = loss_mat * is_weights.detach()
    loss = aggregate(loss_mat, mask, agg)
    with torch.no_grad():
        metrics["clipfrac"] = float(masked_mean((loss_clipped > loss_unclipped).float(), mask))
        metrics["approx_kl"] = float(masked_mean(ratio - 1.0 - log_ratio, mask))
        metrics["ratio_mean"] = float(masked_mean(ratio, mask))
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    agg: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``0.5 * max((v - R)^2, (v_clip - R)^2)`` with ``v_clip = old + clamp(v - old, -clip, clip)``.

    ``clip=None`` gives the plain squared error. ``mask`` is the estimator's ``value_mask``.
    """
    err = (values - returns) ** 2
    if clip is None:
        loss_mat, clipped = err, torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns) ** 2
        loss_mat, clipped = torch.maximum(err, err_clip), err_clip > err
    loss = 0.5 * aggregate(loss_mat, mask, agg)
    return loss, {"vf_clipfrac": float(masked_mean(clipped.float(), mask))}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dim: ``logsumexp(z) - sum softmax(z) * z``."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """Entropy [B, T, V] -> scalar over ``mask`` with the same aggregation as the losses."""
    return aggregate(entropy_from_logits(logits), mask, agg)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3).

    k1 = log(pi/ref) (unbiased, can be negative); k2 = 0.5 * log(pi/ref)^2; k3 = ref/pi - 1 -
    log(ref/pi) (unbiased and >= 0, low variance); abs = |log(pi/ref)|.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        neg = (-log_ratio).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {kind!r}; known: {KL_KINDS}")
