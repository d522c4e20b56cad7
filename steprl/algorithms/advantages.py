"""Advantage estimators, registered by name (``cfg.estimator``).

Every estimator has the signature
``fn(batch, values, cfg, *, extra_token_rewards=None) -> AdvantageOutput`` where ``values[b, t]``
is the critic's value of the state after reading tokens ``<= t`` (so the state in which action
token t is chosen has value ``values[b, t - 1]``). ``advantages`` are 0 outside action tokens;
``returns``/``value_mask`` say where the critic regresses to what: targets sit at state
positions (``t - 1`` for action token t, the token just before step k for V(s_k)).

``extra_token_rewards`` [B, T] (e.g. ``-coef * kl`` from :func:`steprl.algorithms.kl.apply_kl_in_reward`)
is added on action tokens by token-level estimators and summed per step by step-level ones.

A truncated episode bootstraps from the value of its last *state* (:func:`_bootstrap`): after a
turn-limit cut the last token is an observation token and that value is ``values[b, last_index[b]]``;
after a token-budget cut the last token is an action token (the cut step never got its result), so
the bootstrap is V(s_k) of the cut step k, and the cut step's states get no critic target. Otherwise
(done, or ended for any other reason) the value after the last step is 0.
Whitening over the batch's action tokens happens in one place, :func:`compute_advantages`, never
inside an estimator: ``cfg.whiten`` True/False, or None for the estimator's own definition (registered
with it: REINFORCE++ and the trl-0.10 compat mode whiten; GRPO and RLOO, whose group baseline already
normalizes, and the value-based estimators return raw advantages).

Formulas next to each function are collected in ``docs/algorithms.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from steprl.algorithms.losses import masked_whiten
from steprl.algorithms.placement import (
    action_step_index,
    broadcast_step_values,
    place_step_rewards,
    step_first_positions,
    step_last_positions,
    steptool_compat_multipliers,
    sum_per_step,
)
from steprl.protocol import Batch


@dataclass
class AdvantageConfig:
    estimator: str = "step_gae"
    gamma: float = 0.99  # discount per step (step estimators) or per action token (token estimators)
    lam: float = 0.95  # GAE lambda
    token_level_refine: bool = False  # step_gae: refine A_k with token-level GAE inside the step
    token_lam: float = 1.0  # lambda of that in-step refinement (1.0: A = G_k - V(token state))
    norm_by_std: bool = True  # grpo: divide by the group std
    outcome: str = "is_solved"  # grpo/rloo outcome: "is_solved" | "sum" (of step rewards)
    eps: float = 1e-6  # grpo std epsilon
    # whiten advantages over the batch's action tokens (in compute_advantages, once); None: the
    # estimator's definition (True for reinforce_pp and steptool_compat, which trl 0.10 whitens)
    whiten: bool | None = None


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [B, T], 0 outside action tokens
    returns: torch.Tensor  # [B, T] critic targets where value_mask (or the outcome, for critic-free)
    value_mask: torch.Tensor  # [B, T] bool, where the critic regresses to returns


AdvantageFn = Callable[..., AdvantageOutput]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}
WHITENS_BY_DEFAULT: dict[str, bool] = {}  # name -> whether the estimator's definition whitens


def register_advantage(name: str, *, whitens: bool = False) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register an estimator under ``name`` (extension without editing this module); ``whitens``: its
    definition whitens the advantages over the batch (applied by :func:`compute_advantages`)."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        old = ADVANTAGE_ESTIMATORS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"advantage estimator {name!r} is already registered by {old.__module__}")
        ADVANTAGE_ESTIMATORS[name] = fn
        WHITENS_BY_DEFAULT[name] = whitens
        return fn

    return deco


def get_advantage_estimator(name: str) -> AdvantageFn:
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]


def compute_advantages(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Dispatch to ``cfg.estimator``, then whiten over the action tokens if :func:`whitens` says so."""
    out = estimate_advantages(batch, values, cfg, extra_token_rewards)
    return whiten_output(out, batch.action_mask, whitens(cfg))


def estimate_advantages(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """The estimator's raw output (no whitening): what the training step's prepare stage whitens."""
    return get_advantage_estimator(cfg.estimator)(batch, values, cfg, extra_token_rewards=extra_token_rewards)


def whitens(cfg: AdvantageConfig) -> bool:
    """``cfg.whiten``, or the estimator's definition when it is None."""
    return WHITENS_BY_DEFAULT.get(cfg.estimator, False) if cfg.whiten is None else cfg.whiten


def whiten_output(out: AdvantageOutput, action_mask: torch.Tensor, whiten: bool) -> AdvantageOutput:
    """The one place advantages are whitened: ``(A - mean) / sqrt(var + 1e-8)`` over action tokens.

    Also used for advantages that do not come from an estimator (ArCHer's critic), so that nothing is
    whitened twice."""
    if not whiten:
        return out
    return AdvantageOutput(masked_whiten(out.advantages, action_mask), out.returns, out.value_mask)


# ----------------------------------------------------------------------------- shared pieces


def _require_values(values: torch.Tensor | None, batch: Batch, name: str) -> torch.Tensor:
    if values is None:
        raise ValueError(f"{name} needs critic values")
    if values.shape != batch.input_ids.shape:
        raise ValueError(
            f"values {tuple(values.shape)} do not match the batch {tuple(batch.input_ids.shape)}"
        )
    return values.float()


def _prev_values(values: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """[B, T]: ``values[b, t - 1]``, the value of the state in which token t is chosen."""
    if bool(action_mask[:, 0].any()):
        raise ValueError("an action token at position 0 has no state before it (empty prompt)")
    prev = torch.zeros_like(values)
    prev[:, 1:] = values[:, :-1]
    return prev


def _budget_cut(batch: Batch) -> torch.Tensor:
    """[B] bool: truncated with an action token last, i.e. cut by the token budget inside the last
    step (mid-turn, or after a call whose result did not fit) rather than after an observation."""
    last_is_action = batch.action_mask.gather(1, batch.last_index.view(-1, 1)).squeeze(1)
    return batch.truncated & last_is_action


def _cut_step_tokens(batch: Batch, step_index: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the action tokens of the cut step of every budget-cut row (False elsewhere)."""
    last_step = (batch.step_mask.sum(dim=1) - 1).clamp(min=0)
    return _budget_cut(batch).view(-1, 1) & (step_index == last_step.view(-1, 1)) & batch.action_mask


def _cut_steps(batch: Batch) -> torch.Tensor:
    """[B, S] bool: the cut step (the last one) of every budget-cut row."""
    last_step = (batch.step_mask.sum(dim=1) - 1).clamp(min=0)
    ks = torch.arange(batch.step_mask.shape[1], device=last_step.device).view(1, -1)
    return _budget_cut(batch).view(-1, 1) & (ks == last_step.view(-1, 1))


def _bootstrap(batch: Batch, values: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
    """[B]: the value after the last step; 0 unless truncated.

    A turn-limit cut ends on an observation token, the state the next turn would start from:
    ``values[last_index]``. A token-budget cut ends on an action token, a position no critic is
    trained at (targets sit at state positions) and whose successor state does not exist in the
    tokens. It bootstraps from ``V(s_k)``, the value at the last state token before the cut step k:
    the cut action is treated as not having moved the episode (its result never reached the
    policy), so ``delta_k = r_k + gamma V(s_k) - V(s_k)`` scores the cut step by its own reward.
    """
    last = values.gather(1, batch.last_index.view(-1, 1)).squeeze(1)
    v_state, _ = _state_values(batch, values, step_index)
    last_step = (batch.step_mask.sum(dim=1) - 1).clamp(min=0)
    v_cut = v_state.gather(1, last_step.view(-1, 1)).squeeze(1)
    value = torch.where(_budget_cut(batch), v_cut, last)
    return torch.where(batch.truncated, value, torch.zeros_like(last))


def _extra(batch: Batch, extra: torch.Tensor | None) -> torch.Tensor:
    """Extra token rewards restricted to action tokens (0 if none)."""
    if extra is None:
        return torch.zeros(batch.input_ids.shape, device=batch.input_ids.device)
    return extra.float() * batch.action_mask


def _step_rewards(batch: Batch, step_index: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """[B, S] step rewards plus the per-step sum of extra token rewards, 0 past the last step."""
    S = batch.step_mask.shape[1]
    return (batch.step_rewards + sum_per_step(_extra(batch, extra), step_index, S)) * batch.step_mask


def _state_values(
    batch: Batch, values: torch.Tensor, step_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """V(s_k) [B, S] and its position [B, S]: the token just before step k's first action token."""
    first = step_first_positions(step_index, batch.step_mask.shape[1])
    if bool((batch.step_mask & (first == 0)).any()):
        raise ValueError("a step starts at position 0: no state before it (empty prompt)")
    pos = (first - 1).clamp(min=0)
    return values.gather(1, pos) * batch.step_mask, pos


def _at_positions(
    step_values: torch.Tensor, pos: torch.Tensor, step_mask: torch.Tensor, T: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter [B, S] step values to [B, T] at ``pos``; returns (tensor, bool mask)."""
    out = step_values.new_zeros(step_values.shape[0], T)
    mask = torch.zeros(step_values.shape[0], T, dtype=torch.bool, device=step_values.device)
    b, k = step_mask.nonzero(as_tuple=True)
    out[b, pos[b, k]] = step_values[b, k]
    mask[b, pos[b, k]] = True
    return out, mask


def _shift_to_states(
    token_values: torch.Tensor, action_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move per-action-token targets to their state positions t - 1; returns (tensor, bool mask)."""
    out = torch.zeros_like(token_values)
    mask = torch.zeros_like(action_mask)
    out[:, :-1] = token_values[:, 1:] * action_mask[:, 1:]
    mask[:, :-1] = action_mask[:, 1:]
    return out, mask


def _discounted_gae(delta: torch.Tensor, discount: float) -> torch.Tensor:
    """``A_k = sum_l discount^l delta_{k+l}`` along dim 1 (entries past the end must be 0)."""
    out = torch.zeros_like(delta)
    running = delta.new_zeros(delta.shape[0])
    for k in reversed(range(delta.shape[1])):
        running = delta[:, k] + discount * running
        out[:, k] = running
    return out


def action_token_gae(
    values: torch.Tensor,
    token_rewards: torch.Tensor,
    action_mask: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GAE over action tokens only; observation spans are skipped, not reset.

    For action tokens t_0 < t_1 < ... (of one row): ``V_i = values[t_i - 1]``,
    ``delta_i = r_{t_i} + gamma * V_{i+1} - V_i`` with ``V_{n} = bootstrap``, and
    ``A_i = sum_l (gamma lam)^l delta_{i+l}``: discounting counts action tokens only and the value
    after an observation span is read at the next action token. Returns (advantages, returns),
    both on action tokens (``returns = A + V_i``).
    """
    prev = _prev_values(values, action_mask)
    adv = torch.zeros_like(values)
    next_value = bootstrap.clone()
    running = values.new_zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        act = action_mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - prev[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(act, candidate, running)
        next_value = torch.where(act, prev[:, t], next_value)
        adv[:, t] = torch.where(act, candidate, torch.zeros_like(candidate))
    return adv, (adv + prev) * action_mask


def _cut_token_states(batch: Batch, step_index: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions t - 1 of the action tokens t of budget-cut steps (their token states)."""
    cut = _cut_step_tokens(batch, step_index)
    out = torch.zeros_like(cut)
    out[:, :-1] = cut[:, 1:]
    return out


def _token_targets(
    batch: Batch, token_returns: torch.Tensor, step_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic targets of token-level estimators at t - 1 for every action token t, except the
    tokens of a budget-cut step (their targets would lean on the cut step's own V(s_k))."""
    returns, value_mask = _shift_to_states(token_returns, batch.action_mask)
    value_mask = value_mask & ~_cut_token_states(batch, step_index)
    return returns * value_mask, value_mask


# ----------------------------------------------------------------------------- estimators


@register_advantage("step_gae")
def step_gae(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """GAE over steps (StepTool's default), A_k broadcast to step k's action tokens.

    ``delta_k = r_k + gamma (1 - done_k) V(s_{k+1}) - V(s_k)``, ``A_k = sum_l (gamma lam)^l delta_{k+l}``,
    critic target ``R_k = A_k + V(s_k)`` at V(s_k)'s position. See :func:`_refine_in_step` for
    ``cfg.token_level_refine``.
    """
    values = _require_values(values, batch, "step_gae")
    idx = action_step_index(batch)
    v_state, pos = _state_values(batch, values, idx)
    r = _step_rewards(batch, idx, extra_token_rewards)
    v_next = torch.zeros_like(v_state)
    v_next[:, :-1] = v_state[:, 1:]  # non-final steps are never terminal
    last_step = (batch.step_mask.sum(dim=1) - 1).clamp(min=0)
    v_next.scatter_(1, last_step.view(-1, 1), _bootstrap(batch, values, idx).view(-1, 1))
    delta = (r + cfg.gamma * v_next - v_state) * batch.step_mask
    adv_step = _discounted_gae(delta, cfg.gamma * cfg.lam) * batch.step_mask
    ret_step = adv_step + v_state
    if cfg.token_level_refine:
        out = _refine_in_step(batch, values, idx, ret_step, cfg.token_lam)
        out.value_mask &= ~_cut_token_states(batch, idx)
        out.returns = out.returns * out.value_mask
        return out
    returns, value_mask = _at_positions(ret_step, pos, batch.step_mask, values.shape[1])
    # a budget-cut step's target would be bootstrapped from its own state's value: no target there
    cut_state = _at_positions(v_state, pos, batch.step_mask & _cut_steps(batch), values.shape[1])[1]
    value_mask = value_mask & ~cut_state
    return AdvantageOutput(broadcast_step_values(adv_step, idx), returns * value_mask, value_mask)


def _refine_in_step(
    batch: Batch, values: torch.Tensor, idx: torch.Tensor, ret_step: torch.Tensor, token_lam: float
) -> AdvantageOutput:
    """Token-level GAE inside each step, aimed at the step's lambda-return ``G_k = A_k + V(s_k)``.

    For the action tokens t_0 < ... < t_{m-1} of step k with ``u_j = values[t_j - 1]``:
    ``delta_j = u_{j+1} - u_j`` (no reward and no discount inside a step: the environment's clock
    is the step), ``delta_{m-1} = G_k - u_{m-1}``, ``A_{k,j} = sum_l token_lam^l delta_{j+l}``.
    With token_lam = 1 this is ``G_k - u_j`` (a per-token baseline); the first token always gets
    exactly A_k. Critic targets ``A_{k,j} + u_j`` sit at every position t_j - 1.
    """
    act = batch.action_mask
    prev = _prev_values(values, act)
    target = broadcast_step_values(ret_step, idx)
    is_last = torch.zeros_like(act)
    last = step_last_positions(idx, batch.step_mask.shape[1])
    b, k = (last >= 0).nonzero(as_tuple=True)
    is_last[b, last[b, k]] = True
    adv = torch.zeros_like(values)
    next_u = values.new_zeros(values.shape[0])
    running = values.new_zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        a, end = act[:, t], is_last[:, t]
        running = torch.where(end, torch.zeros_like(running), running)
        nxt = torch.where(end, target[:, t], next_u)
        candidate = nxt - prev[:, t] + token_lam * running
        running = torch.where(a, candidate, running)
        next_u = torch.where(a, prev[:, t], next_u)
        adv[:, t] = torch.where(a, candidate, torch.zeros_like(candidate))
    returns, value_mask = _shift_to_states((adv + prev) * act, act)
    return AdvantageOutput(adv, returns, value_mask)


@register_advantage("token_gae")
def token_gae(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Classic per-token GAE over action tokens, step rewards on each step's last action token."""
    values = _require_values(values, batch, "token_gae")
    rewards = place_step_rewards(batch) + _extra(batch, extra_token_rewards)
    idx = action_step_index(batch)
    adv, ret = action_token_gae(
        values, rewards, batch.action_mask, _bootstrap(batch, values, idx), cfg.gamma, cfg.lam
    )
    return AdvantageOutput(adv, *_token_targets(batch, ret, idx))


@register_advantage("final_reward")
def final_reward(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """PPO baseline with only the outcome: IsSolved on the last action token, token-level GAE."""
    values = _require_values(values, batch, "final_reward")
    only_final = torch.zeros_like(batch.step_rewards)
    last_step = (batch.step_mask.sum(dim=1) - 1).clamp(min=0)
    only_final.scatter_(1, last_step.view(-1, 1), batch.is_solved.float().view(-1, 1))
    rewards = place_step_rewards(batch, only_final) + _extra(batch, extra_token_rewards)
    idx = action_step_index(batch)
    adv, ret = action_token_gae(
        values, rewards, batch.action_mask, _bootstrap(batch, values, idx), cfg.gamma, cfg.lam
    )
    return AdvantageOutput(adv, *_token_targets(batch, ret, idx))


@register_advantage("steptool_compat", whitens=True)
def steptool_compat(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """The published StepTool repository (trl 0.10 ``PPOTrainer`` + ``StepPPOTrainer``).

    Token rewards ``r_k * (n - 1 - k)`` on the last action token of turn k (the final reward is
    multiplied by 0); per-token GAE over ALL tokens, where ``V_t = values[t - 1]`` on action
    tokens and 0 elsewhere (observation tokens stay in the recursion with reward 0 and value 0);
    the value after the last token is 0 (no bootstrap, even if truncated). Advantages are then
    whitened over the batch's action tokens (as trl 0.10 does) unless ``cfg.whiten`` is False.
    """
    values = _require_values(values, batch, "steptool_compat")
    act = batch.action_mask
    multipliers = steptool_compat_multipliers(batch.step_mask)
    rewards = place_step_rewards(batch, batch.step_rewards * multipliers) + _extra(batch, extra_token_rewards)
    v_tok = _prev_values(values, act) * act
    v_next = torch.zeros_like(v_tok)
    v_next[:, :-1] = v_tok[:, 1:]
    delta = rewards + cfg.gamma * v_next - v_tok
    adv = _discounted_gae(delta, cfg.gamma * cfg.lam)
    returns, value_mask = _shift_to_states((adv + v_tok) * act, act)
    return AdvantageOutput(adv * act, returns, value_mask)


@register_advantage("isolated_steps")
def isolated_steps(
    batch: Batch,
    values: torch.Tensor | None,
    cfg: AdvantageConfig,
    *,
    extra_token_rewards: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Ablation "without step-grained optimization": each step is a one-step episode.

    ``A_k = r_k - V(s_k)``, critic target ``r_k`` at V(s_k)'s position; no bootstrapping.
    """
    values = _require_values(values, batch, "isolated_steps")
    idx = action_step_index(batch)
    v_state, pos = _state_values(batch, values, idx)
    r = _step_rewards(batch, idx, extra_token_rewards)
    adv_step = (r - v_state) * batch.step_mask
    returns, value_mask = _at_positions(r, pos, batch.step_mask, values.shape[1])
    return AdvantageOutput(broadcast_step_values(adv_step, idx), returns, value_mask)
