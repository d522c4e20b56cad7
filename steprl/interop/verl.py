"""steprl's step-level estimators in verl's advantage-estimator registry.

verl cannot share an environment with steprl's vLLM (transformers pins), so this module imports verl
only inside :func:`register_step_estimators`; the rest takes verl's tensors and needs nothing but torch
and steprl's pure estimators (``steprl.algorithms.advantages``), which compute every number: this file
only moves tensors between the two layouts.

verl's layout: response-only tensors ``[B, R]``, right-padded, where ``values[b, t]`` is the critic's
value of the state in which response token t is chosen (verl shifts the model output by one token).
The batch keys read (``data.batch`` of a verl ``DataProto``):

* ``token_level_rewards`` [B, R] float: each step's reward on that step's tokens (conventionally its last
  token; a step's rewards are summed). A non-zero reward outside every step raises: it would vanish.
* ``values`` [B, R] float: the critic's values, as verl's critic writes them.
* ``response_mask`` [B, R]: 1 on tokens the policy generated, 0 on tool/user output and padding.
* ``step_index`` [B, R] int (:data:`STEP_INDEX_KEY`): on every token with ``response_mask`` 1, the
  0-based index of the assistant turn (step) it belongs to, counting 0, 1, 2, ... within the response;
  -1 elsewhere. :func:`step_index_from_response_mask` derives it where each turn is one contiguous span.
* ``truncated`` [B] bool, optional (:data:`TRUNCATED_KEY`): the response was cut by the token budget inside
  its last step. steprl then bootstraps from V(s_k) of the cut step. verl's values hold no value for the
  state after the last response token, so an episode cut after an observation (turn limit) cannot
  bootstrap here: leave it unflagged and it ends with value 0, as in verl's own GAE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from steprl.algorithms.advantages import AdvantageConfig, AdvantageOutput, compute_advantages
from steprl.algorithms.placement import sum_per_step
from steprl.protocol import Batch

STEP_INDEX_KEY = "step_index"
TRUNCATED_KEY = "truncated"
# verl name -> steprl estimator
VERL_ESTIMATORS: dict[str, str] = {
    "steprl_step_gae": "step_gae",
    "steprl_step_gae_compat": "steptool_compat",
}
_NOT_PASSED = (
    "{name} needs `values` and `step_index`. verl 0.9's compute_advantage passes a registered estimator "
    "only token_level_rewards, response_mask, config, index and reward_baselines: call "
    "steprl.interop.verl.compute_step_advantage(data, {name!r}, config) from the advantage stage "
    "instead (docs/interop.md)"
)


def step_index_from_response_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """[B, R] long: the k-th contiguous span of ``response_mask`` 1 in a row is step k; -1 elsewhere.

    Exact for verl's agent loops, where each assistant turn is generated in one piece and the tool or
    user output that follows it (chat-template tokens included) has ``response_mask`` 0."""
    mask = response_mask.bool()
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    idx = starts.long().cumsum(dim=1) - 1
    return torch.where(mask, idx, torch.full_like(idx, -1))


def to_steprl_inputs(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    step_index: torch.Tensor,
    truncated: torch.Tensor | None = None,
) -> tuple[Batch, torch.Tensor]:
    """verl's response tensors -> a steprl :class:`Batch` and its ``[B, R + 1]`` values.

    One placeholder prompt token goes first, so response token t sits at position ``t + 1`` and
    ``values[b, t]`` (verl: the state before token t) lands at position t, where steprl reads the state
    before the token at ``t + 1``. Raises ValueError on a layout steprl would misread."""
    shape = response_mask.shape
    for name, x in (
        ("token_level_rewards", token_level_rewards),
        ("values", values),
        ("step_index", step_index),
    ):
        if x.shape != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, response_mask {tuple(shape)}")
    if step_index.is_floating_point() or step_index.dtype == torch.bool:
        raise ValueError(f"step_index must be an integer tensor, got {step_index.dtype}")
    B, R = shape
    act = response_mask.bool()
    step_index = step_index.long()
    rewards = token_level_rewards.float()
    _check_steps(act, step_index, rewards)
    idx = torch.where(act, step_index, torch.full_like(step_index, -1))
    S = max(1, int(idx.max()) + 1) if idx.numel() else 1
    step_mask = sum_per_step(act.long(), idx, S) > 0
    holes = step_mask[:, 1:] & ~step_mask[:, :-1]
    if bool(holes.any()):
        b, k = (int(x) for x in holes.nonzero()[0])
        raise ValueError(f"row {b}: step {k + 1} has tokens but step {k} has none (count steps 0, 1, 2, ...)")
    if truncated is None:
        truncated = torch.zeros(B, dtype=torch.bool, device=act.device)
    truncated = truncated.bool().view(-1)
    if truncated.shape[0] != B:
        raise ValueError(f"truncated has {truncated.shape[0]} entries for {B} rows")

    def pad(x: torch.Tensor, fill: Any) -> torch.Tensor:
        return torch.cat([torch.full((B, 1), fill, dtype=x.dtype, device=x.device), x], dim=1)

    positions = torch.arange(1, R + 1, device=act.device).view(1, -1)
    last_action = torch.where(act, positions, 0).amax(dim=1)  # the cut token of a budget-cut row
    full_act = pad(act, False)
    batch = Batch(
        input_ids=torch.zeros(B, R + 1, dtype=torch.long, device=act.device),
        attention_mask=torch.ones(B, R + 1, dtype=torch.bool, device=act.device),
        action_mask=full_act,
        obs_mask=pad(~act, False),
        step_index=pad(idx, -1),
        rollout_logprobs=torch.zeros(B, R + 1, device=act.device),
        step_rewards=sum_per_step(rewards * act, idx, S),
        step_mask=step_mask,
        done=~truncated,
        truncated=truncated,
        last_index=last_action,
        prompt_lengths=torch.ones(B, dtype=torch.long, device=act.device),
        is_solved=torch.zeros(B, device=act.device),
        group_ids=[""] * B,
    )
    full_values = torch.cat([values.float(), values.new_zeros(B, 1).float()], dim=1)
    return batch, full_values


def _check_steps(act: torch.Tensor, step_index: torch.Tensor, rewards: torch.Tensor) -> None:
    """Each generated token has a step, and no reward sits where no step can carry it."""
    unassigned = act & (step_index < 0)
    if bool(unassigned.any()):
        b, t = (int(x) for x in unassigned.nonzero()[0])
        raise ValueError(
            f"row {b}: response token {t} has response_mask 1 but step_index {int(step_index[b, t])}"
        )
    stray = ~act & (rewards != 0)
    if bool(stray.any()):
        b, t = (int(x) for x in stray.nonzero()[0])
        raise ValueError(
            f"row {b}: reward {float(rewards[b, t])} on response token {t}, which has response_mask 0 "
            "(it would vanish): put each step's reward on one of its own tokens"
        )


def from_steprl_output(out: AdvantageOutput, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """steprl's ``[B, R + 1]`` output -> verl's ``(advantages, returns)``, both ``[B, R]``.

    steprl's critic target for the state before position ``t + 1`` sits at position t, i.e. at verl's
    ``values[:, t]``. verl's critic loss covers every response token; where steprl sets no target the
    returns are the critic's own ``values``, so those tokens start the update with zero error."""
    if bool(out.value_mask[:, -1].any()):
        raise ValueError(
            "steprl set a critic target after the last response token, which verl has no value for"
        )
    mask = out.value_mask[:, :-1]
    returns = torch.where(mask, out.returns[:, :-1], values.float())
    return out.advantages[:, 1:].contiguous(), returns


def estimate(
    estimator: str,
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    step_index: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    truncated: torch.Tensor | None = None,
    whiten: bool | None = None,
    token_level_refine: bool = False,
    token_lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run steprl's ``estimator`` (a steprl name, e.g. ``step_gae``) on verl's tensors.

    ``whiten`` None keeps the estimator's own definition (``step_gae`` raw, ``steptool_compat`` whitened,
    as in steprl); verl's own GAE always whitens, so pass True to match that."""
    cfg = AdvantageConfig(
        estimator=estimator,
        gamma=gamma,
        lam=lam,
        token_level_refine=token_level_refine,
        token_lam=token_lam,
        whiten=whiten,
    )
    with torch.no_grad():
        batch, full_values = to_steprl_inputs(
            token_level_rewards, values, response_mask, step_index, truncated
        )
        return from_steprl_output(compute_advantages(batch, full_values, cfg), values)


def _from_verl(
    verl_name: str,
    estimator: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Mapping[str, Any] | None,
    values: torch.Tensor | None,
    step_index: torch.Tensor | None,
    gamma: float | None,
    lam: float | None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One verl entry point: values and step index required; gamma and lambda the explicit arguments,
    else verl's ``algorithm`` config (``config.gamma/lam``); then :func:`estimate`."""
    if values is None or step_index is None:
        raise ValueError(_NOT_PASSED.format(name=verl_name))
    if config is not None:
        gamma = config.get("gamma") if gamma is None else gamma
        lam = config.get("lam") if lam is None else lam
    if gamma is None or lam is None:
        raise ValueError("pass gamma and lam, or verl's algorithm config (which has both)")
    return estimate(
        estimator, token_level_rewards, values, response_mask, step_index,
        gamma=float(gamma), lam=float(lam), **options,
    )  # fmt: skip


def steprl_step_gae(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Mapping[str, Any] | None = None,
    *,
    values: torch.Tensor | None = None,
    step_index: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    gamma: float | None = None,
    lam: float | None = None,
    whiten: bool | None = None,
    token_level_refine: bool = False,
    token_lam: float = 1.0,
    index: Any = None,
    reward_baselines: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``steprl_step_gae``: GAE over steps, A_k on every token of step k.

    ``index`` (verl's group uids) and ``reward_baselines`` are accepted because verl passes them, and unused."""
    del index, reward_baselines
    return _from_verl(
        "steprl_step_gae", "step_gae", token_level_rewards, response_mask, config, values, step_index,
        gamma, lam, truncated=truncated, whiten=whiten, token_level_refine=token_level_refine, token_lam=token_lam,
    )  # fmt: skip


def steprl_step_gae_compat(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Mapping[str, Any] | None = None,
    *,
    values: torch.Tensor | None = None,
    step_index: torch.Tensor | None = None,
    truncated: torch.Tensor | None = None,
    gamma: float | None = None,
    lam: float | None = None,
    whiten: bool | None = None,
    index: Any = None,
    reward_baselines: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``steprl_step_gae_compat``: the published StepTool repository's behaviour
    (steprl's ``steptool_compat``: step reward times ``n - 1 - k``, per-token GAE, whitened).

    ``truncated`` is accepted for a uniform call and ignored, as the repository never bootstraps."""
    del index, reward_baselines
    return _from_verl(
        "steprl_step_gae_compat", "steptool_compat", token_level_rewards, response_mask, config, values,
        step_index, gamma, lam, truncated=truncated, whiten=whiten,
    )  # fmt: skip


_FUNCTIONS = {"steprl_step_gae": steprl_step_gae, "steprl_step_gae_compat": steprl_step_gae_compat}


def compute_step_advantage(
    data: Any, adv_estimator: str, config: Mapping[str, Any] | None = None, **options: Any
) -> Any:
    """Fill ``data.batch["advantages"]`` and ``["returns"]`` from a verl ``DataProto`` (or anything with a
    ``batch`` mapping) for one of :data:`VERL_ESTIMATORS`; returns ``data``.

    Reads the keys in the module docstring; ``options`` go to the estimator (gamma, lam, whiten, ...)."""
    if adv_estimator not in _FUNCTIONS:
        raise KeyError(f"{adv_estimator!r} is not a steprl estimator; known: {sorted(_FUNCTIONS)}")
    tensors = data.batch
    missing = [
        k for k in ("token_level_rewards", "values", "response_mask", STEP_INDEX_KEY) if k not in tensors
    ]
    if missing:
        raise KeyError(f"{adv_estimator} needs {missing} in data.batch (docs/interop.md)")
    truncated = tensors.get(TRUNCATED_KEY, None)
    advantages, returns = _FUNCTIONS[adv_estimator](
        tensors["token_level_rewards"],
        tensors["response_mask"],
        config,
        values=tensors["values"],
        step_index=tensors[STEP_INDEX_KEY],
        truncated=truncated,
        **options,
    )
    tensors["advantages"] = advantages
    tensors["returns"] = returns
    return data


def register_step_estimators() -> list[str]:
    """Register :data:`VERL_ESTIMATORS` in verl's registry (``algorithm.adv_estimator=<name>``).

    Idempotent. Call it in every process that looks estimators up (verl's trainer runs in a Ray actor:
    a module named in ``VERL_USE_EXTERNAL_MODULES`` is imported by ``import verl`` there)."""
    try:
        from verl.trainer.ppo.core_algos import register_adv_est
    except ImportError as e:
        raise ImportError(
            "steprl.interop.verl.register_step_estimators needs verl (`pip install verl`) in this environment; "
            f"steprl itself does not depend on it ({e})"
        ) from e
    for name, fn in _FUNCTIONS.items():
        register_adv_est(name)(fn)
    return list(_FUNCTIONS)
