"""ArCHer (hierarchical actor-critic): an utterance-level off-policy critic and a token-level policy.

One iteration: rollouts with the current policy (scored with the StepTool step rewards) go into a
replay buffer of trajectories; ``archer.critic_updates`` TD steps train the critic (double Q + V,
target networks, ``workers.archer``) on buffer samples, the V targets using actions the *current*
policy samples at the replayed states; after ``archer.actor_warmup`` iterations the policy is trained
on the fresh rollouts with ``A_k = min(Q1, Q2)(s_k, a_k) - V(s_k)`` on step k's action tokens
(``algorithm.ppo_epochs=1, num_mini_batches=1`` is REINFORCE; more is PPO). Only the prepare stage
(critic TD steps, then the critic's advantages) differs from the shared step. Formulas:
``steprl.algorithms.archer``.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from steprl import step
from steprl.algorithms.advantages import AdvantageOutput
from steprl.algorithms.archer import (
    double_q_min,
    gather_steps,
    step_positions,
    td_q_targets,
    utterance_advantages,
)
from steprl.algorithms.losses import masked_mean
from steprl.algorithms.placement import action_step_index, broadcast_step_values
from steprl.fault import merge_by_id
from steprl.methods import Method, register_method
from steprl.protocol import Trajectory, collate
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


class ReplayBuffer:
    """The last ``capacity`` trajectories (each holds all of its steps), sampled uniformly."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.items: deque[Trajectory] = deque(maxlen=capacity)
        self.rng = random.Random(seed)

    def add(self, trajs: list[Trajectory]) -> None:
        self.items.extend(t for t in trajs if t.num_steps > 0)

    def sample(self, n: int) -> list[Trajectory]:
        return self.rng.sample(list(self.items), min(n, len(self.items)))

    def __len__(self) -> int:
        return len(self.items)


def sample_turns(
    worker: Any, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int
) -> list[list[int]]:
    """One turn per prompt from the worker's engine (runs inside a RolloutWorker via ``run``)."""
    gens = worker.engine.generate(prompts, [max_tokens] * len(prompts), temperature, seed)
    return [g.token_ids for g in gens]


def _pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return {"input_ids": ids, "attention_mask": mask}


@register_method("archer")
class ArCHer(Method):
    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.algorithm.use_critic:
            return "ArCHer brings its own utterance-level critic: set algorithm.use_critic=false"
        if cfg.algorithm.kl_in == "reward" and cfg.algorithm.kl_coef > 0:
            return "ArCHer's advantage comes from its critic: use algorithm.kl_in=loss for a KL term"
        if cfg.reward.normalize != "none":
            return "ArCHer trains its critic on the raw step rewards: set reward.normalize=none"
        return None

    def setup(self, ctx: MethodContext) -> None:
        from workers.archer import ArcherCriticWorker
        from workers.group import WorkerGroup

        c = ctx.cfg
        self.critic = WorkerGroup(
            ArcherCriticWorker, c.critic.world_size, c.critic.num_cpus, c.critic.num_gpus, "archer_critic",
            balance_rows=c.critic.balance_rows, model_path=ctx.policy_path, model_cfg=c.model,
            worker_cfg=c.critic, optim_cfg=c.optim, algo_cfg=c.algorithm, seed=c.trainer.seed,
            tau=c.archer.tau, critic_path=c.archer.critic_path,
        )  # fmt: skip
        ctx.add_group("archer_critic", self.critic)
        self.buffer = ReplayBuffer(c.archer.buffer_size, c.trainer.seed)

    # ---- critic --------------------------------------------------------------------------------
    def policy_actions(self, ctx: MethodContext, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """a' ~ pi(. | s) for every state, from the rollout engines (which hold the current policy)."""
        c = ctx.cfg.rollout
        chunks, parts = ctx.fan_out(sample_turns, prompts, c.max_tokens_per_turn, c.temperature, seed=seed)
        by_id = merge_by_id(chunks, parts)
        return [by_id[i] for i in range(len(prompts))]

    def critic_step(self, ctx: MethodContext, trajs: list[Trajectory], seed: int) -> dict[str, float]:
        """One TD update on a sample of the buffer."""
        c = ctx.cfg.archer
        batch = collate(trajs, ctx.pad_id)
        pos = step_positions(batch)
        data = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        target = self.critic.gather_rows("compute_target_heads", data)
        next_v = gather_steps(target[..., 2], pos["next_state"])
        q_target = td_q_targets(batch.step_rewards, next_v, pos["terminal"], batch.step_mask, c.gamma)
        b_idx, k_idx = batch.step_mask.nonzero(as_tuple=True)
        states = [
            batch.input_ids[b, : int(pos["state"][b, k]) + 1].tolist()
            for b, k in zip(b_idx.tolist(), k_idx.tolist(), strict=True)
        ]
        actions = self.policy_actions(ctx, states, seed)
        pi = _pad([s + a for s, a in zip(states, actions, strict=True)], ctx.pad_id)
        pi_heads = self.critic.gather_rows("compute_target_heads", pi)
        last = torch.tensor([len(s) + len(a) - 1 for s, a in zip(states, actions, strict=True)])
        rows = torch.arange(len(states))
        v_target = torch.zeros_like(q_target)
        v_target[b_idx, k_idx] = double_q_min(pi_heads[rows, last, 0], pi_heads[rows, last, 1])
        data.update(
            step_mask=batch.step_mask, state_pos=pos["state"], action_pos=pos["action"],
            q_target=q_target, v_target=v_target,
        )  # fmt: skip
        metrics = self.critic.mean_metrics("update_critic", data)
        metrics["archer/q_target_mean"] = float(masked_mean(q_target, batch.step_mask))
        metrics["archer/v_target_mean"] = float(masked_mean(v_target, batch.step_mask))
        return metrics

    def prepare(self, ctx: MethodContext, rollout: Rollout) -> Prepared:
        """TD steps of the critic on the replay buffer, then (after the warm-up) the shared prepare with
        the critic's advantages."""
        c, it = ctx.cfg, rollout.iteration
        self.buffer.add(rollout.trajectories)
        critic: dict[str, list[float]] = {}
        with ctx.timer("critic"):
            for u in range(c.archer.critic_updates):
                sample = self.buffer.sample(c.archer.batch_size)
                for k, v in self.critic_step(ctx, sample, ctx.rollout_seed(it) + 31 * (u + 1)).items():
                    critic.setdefault(k, []).append(v)
        metrics = {k: sum(v) / len(v) for k, v in critic.items()}
        metrics["archer/buffer_trajectories"] = float(len(self.buffer))
        metrics["archer/actor_updated"] = float(it > c.archer.actor_warmup)
        prep = step.prepare(ctx, rollout, self) if it > c.archer.actor_warmup else Prepared()
        prep.metrics.update(metrics)
        return prep

    # ---- actor ---------------------------------------------------------------------------------
    def advantages(
        self, ctx: MethodContext, prep: Prepared, values: torch.Tensor | None, extra: torch.Tensor | None
    ) -> AdvantageOutput:
        """``min(Q1, Q2)(s_k, a_k) - V(s_k)`` of the online critic on step k's action tokens."""
        batch = prep.batch
        heads = self.critic.gather_rows("compute_heads", prep.data)
        pos = step_positions(batch)
        q1 = gather_steps(heads[..., 0], pos["action"])
        q2 = gather_steps(heads[..., 1], pos["action"])
        v = gather_steps(heads[..., 2], pos["state"])
        adv = broadcast_step_values(
            utterance_advantages(q1, q2, v, batch.step_mask), action_step_index(batch)
        )
        no_targets = torch.zeros_like(batch.action_mask)  # the token-level critic is not used
        return AdvantageOutput(adv, torch.zeros_like(adv), no_targets)
