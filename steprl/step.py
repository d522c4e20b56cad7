"""One training iteration, in four stages every method reuses:

    collect  -> scored episodes (rollout + reward workers, through the fault path; or offline data)
    prepare  -> reward normalization, actor / reference log-probs, critic values, advantages
    update   -> critic and actor steps (PPO by default; SFT, DPO or ranking steps for other methods)
    finish   -> weight sync, KL controller, episode metrics, timings, tokens/s, peak memory, faults

A method (``steprl.methods``) overrides only the stage that makes it different; :func:`iteration`
runs them and :func:`finish` closes every iteration the same way. The stages see the trainer only
through :class:`steprl.context.MethodContext`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steprl.algorithms.advantages import AdvantageOutput, estimate_advantages, whiten_output, whitens
from steprl.algorithms.kl import apply_kl_in_reward
from steprl.algorithms.losses import explained_variance, kl_penalty, masked_mean
from steprl.algorithms.off_policy import truncated_is_weights
from steprl.data.parquet_io import write_trajectories_parquet
from steprl.evaluation.metrics import episode_metrics
from steprl.progress import with_overhead
from steprl.protocol import Batch, Trajectory, collate

if TYPE_CHECKING:
    from steprl.context import MethodContext
    from steprl.methods import Method


@dataclass
class Rollout:
    """What the collect stage produced."""

    trajectories: list[Trajectory] = field(default_factory=list)  # scored episodes (may be none)
    generated_tokens: int = 0
    seconds: float = 0.0  # generation wall clock: rollout/tokens_per_second = generated_tokens / seconds
    metrics: dict[str, float] = field(default_factory=dict)  # reward counters, async/*, method stats
    sync_seconds: float | None = None  # async rollouts: the weight sync already ran inside collect
    payload: Any = None  # method data that is not an episode batch (offline demonstrations, pairs)
    iteration: int = 0  # set by iteration()


@dataclass
class Prepared:
    """What the update stage trains on."""

    batch: Batch | None = None
    trajectories: list[Trajectory] = field(default_factory=list)  # the rows of ``batch``, in order
    data: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors sent to the workers
    metrics: dict[str, float] = field(default_factory=dict)
    payload: Any = None
    iteration: int = 0  # set by iteration()


def iteration(ctx: MethodContext, method: Method, it: int) -> dict[str, float]:
    """collect -> prepare -> update -> finish, each stage timed (``time/rollout|advantage|update``)."""
    ctx.timer.reset()  # stages run between iterations (evaluation) do not count
    t0 = time.time()
    rollout = method.collect(ctx, it)
    rollout.iteration = it
    t_collect = time.time() - t0
    if ctx.cfg.trainer.save_rollouts and rollout.trajectories:  # the scored batch, token-exact
        write_trajectories_parquet(rollout.trajectories, ctx.run_dir / "rollouts" / f"iter_{it:05d}.parquet")
    t1 = time.time()
    prep = method.prepare(ctx, rollout)
    prep.iteration = it
    t2 = time.time()
    update = method.update(ctx, prep)
    times = {"time/rollout": t_collect, "time/advantage": t2 - t1, "time/update": time.time() - t2}
    return finish(ctx, rollout, prep, update, times, t0)


# ---- prepare ------------------------------------------------------------------------------------
def prepare(ctx: MethodContext, rollout: Rollout, method: Method) -> Prepared:
    """Collate, normalize step rewards, log-probs (+ IS weights, reference KL), values, advantages.

    The advantages come from ``method.advantages`` (the registered estimator by default), raw; they
    are whitened here, once, if ``algorithm.whiten_advantages`` (or the estimator's definition) says so.
    """
    if not rollout.trajectories:
        return Prepared(payload=rollout.payload)
    batch = collate(rollout.trajectories, ctx.pad_id)
    if ctx.reward_normalizer is not None:  # running statistics over all step rewards seen so far
        ctx.reward_normalizer.update(batch.step_rewards[batch.step_mask])
        batch.step_rewards = ctx.reward_normalizer.normalize(batch.step_rewards) * batch.step_mask
    prep = Prepared(batch, rollout.trajectories, tensors_of(batch), payload=rollout.payload)
    extra = logprobs(ctx, prep)
    values = None
    if ctx.critic is not None:
        with ctx.timer("critic_forward"):
            values = ctx.critic.gather_rows("compute_values", prep.data)
        prep.data["old_values"] = values
    out = method.advantages(ctx, prep, values, extra)
    mask = batch.action_mask
    prep.metrics["advantage_abs_mean"] = float(masked_mean(out.advantages.abs(), mask))
    out = whiten_output(out, mask, whitens(ctx.adv_cfg))
    prep.data.update(advantages=out.advantages, returns=out.returns, value_mask=out.value_mask)
    prep.metrics["rollout_vs_actor_logprob_diff"] = float(
        masked_mean((prep.data["old_logprobs"] - batch.rollout_logprobs).abs(), mask)
    )
    if values is not None:
        prep.metrics["value_mean"] = float(masked_mean(values, out.value_mask))
        ev = explained_variance(values, out.returns, out.value_mask)
        if not math.isnan(ev):  # the targets varied
            prep.metrics["critic_explained_variance"] = ev
    return prep


def estimator_advantages(
    ctx: MethodContext, prep: Prepared, values: torch.Tensor | None, extra: torch.Tensor | None
) -> AdvantageOutput:
    """The registered estimator (``algorithm.estimator``), unwhitened."""
    return estimate_advantages(prep.batch, values, ctx.adv_cfg, extra)


def logprobs(ctx: MethodContext, prep: Prepared) -> torch.Tensor | None:
    """Actor (and reference) log-probs into ``prep.data``, the truncated IS weights when they are on,
    the KL metric; returns the KL token rewards (``-coef * kl`` on action tokens when
    ``algorithm.kl_in == "reward"``, else None)."""
    batch, data, a = prep.batch, prep.data, ctx.cfg.algorithm
    with ctx.timer("actor_forward"):
        data["old_logprobs"] = ctx.actor.gather_rows("compute_logprobs", data)
    weights = None
    if ctx.use_is:  # rollouts of an older policy: weight each token's loss by min(pi_old/pi_rollout, C)
        weights, is_metrics = truncated_is_weights(
            data["old_logprobs"], batch.rollout_logprobs, batch.action_mask, a.rollout_is_cap
        )
        data["is_weights"] = weights
        prep.metrics.update({f"offpolicy/{k}": v for k, v in is_metrics.items()})
    if ctx.ref is None:
        return None
    with ctx.timer("ref_forward"):
        data["ref_logprobs"] = ctx.ref.gather_rows("compute_logprobs", data)
    kl = kl_penalty(data["old_logprobs"], data["ref_logprobs"], a.kl_kind)
    # an estimate under pi_old: the sampled tokens came from the rollout policy
    prep.metrics["kl"] = float(masked_mean(kl if weights is None else kl * weights, batch.action_mask))
    if a.kl_in == "reward":
        return apply_kl_in_reward(torch.zeros_like(kl), kl, ctx.kl_ctl.value, batch.action_mask)
    return None


# ---- update -------------------------------------------------------------------------------------
def ppo_update(ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
    """Critic then actor PPO epochs on the prepared batch; None if there is nothing to train on."""
    if prep.batch is None:
        return None
    metrics: dict[str, float] = {}
    mini_batches = ctx.cfg.algorithm.num_mini_batches  # each worker's split of its rows (row_groups)
    if ctx.critic is not None:
        with ctx.timer("critic_update"):
            metrics.update(ctx.critic.mean_metrics("update_critic", prep.data, mini_batches))
    with ctx.timer("actor_update"):
        metrics.update(
            ctx.actor.mean_metrics("update_policy", prep.data, mini_batches, kl_coef=ctx.kl_ctl.value)
        )
    return metrics


# ---- finish -------------------------------------------------------------------------------------
def finish(
    ctx: MethodContext,
    rollout: Rollout,
    prep: Prepared,
    update: dict[str, float] | None,
    times: dict[str, float],
    t0: float,
) -> dict[str, float]:
    """Close an iteration the same way for every method. ``update`` None: the actor did not change
    (no KL step, no weight sync)."""
    metrics = {**prep.metrics, **(update or {})}
    sync = 0.0
    if update is not None:
        if "kl" in metrics and prep.batch is not None:
            ctx.kl_ctl.update(metrics["kl"], prep.batch.size)
        sync = ctx.publish_policy()  # 0 with async rollouts: the next collect syncs
    if rollout.sync_seconds is not None:  # async: the sync ran inside collect, before the next submit
        sync = rollout.sync_seconds
        times["time/rollout"] -= sync
    times["time/sync"] = sync
    times.update(ctx.timer.reset())
    times["time/rollout"] -= times.get("time/reward", 0.0)  # collect scores too
    times["time/iteration"] = time.time() - t0
    out = {**rollout.metrics, **metrics, **with_overhead(times)}
    if rollout.trajectories:
        out.update(episode_metrics(rollout.trajectories, prefix="train/"))
        out["rollout/tokens_per_second"] = rollout_tokens_per_second(rollout)
        out["rollout/generated_tokens"] = rollout.generated_tokens  # what the update trains on (peer_trl)
    out.update(ctx.peak_memory())
    out.update(ctx.fault_metrics())
    out["kl_coef"] = ctx.kl_ctl.value
    return out


def rollout_tokens_per_second(rollout: Rollout) -> float:
    """Generated tokens over the generation wall clock (the one definition of the metric)."""
    return rollout.generated_tokens / max(rollout.seconds, 1e-9)


def tensors_of(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in asdict(batch).items() if isinstance(v, torch.Tensor)}
