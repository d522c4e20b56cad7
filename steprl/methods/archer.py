"""ArCHer (hierarchical actor-critic): an utterance-level off-policy critic and a token-level policy.

One iteration: rollouts with the current policy (scored with the StepTool step rewards) go into a
replay buffer of trajectories; ``archer.critic_updates`` TD steps train the critic (double Q + V,
target networks, ``workers.archer``) on buffer samples, the V targets using actions the *current*
policy samples at the replayed states; after ``archer.actor_warmup`` iterations the policy is trained
on the fresh rollouts with ``A_k = min(Q1, Q2)(s_k, a_k) - V(s_k)`` on step k's action tokens
(``algorithm.ppo_epochs=1, num_mini_batches=1`` is REINFORCE; more is PPO). Formulas:
``steprl.algorithms.archer``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import ray
import torch

from steprl.algorithms.archer import (
    double_q_min,
    gather_steps,
    step_positions,
    td_q_targets,
    utterance_advantages,
)
from steprl.algorithms.losses import masked_mean, masked_whiten
from steprl.algorithms.placement import action_step_index, broadcast_step_values
from steprl.methods import Method, register_method
from steprl.protocol import Trajectory, collate

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.controller import Controller


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

    def setup(self, ctl: Controller) -> None:
        from workers.archer import ArcherCriticWorker
        from workers.group import WorkerGroup

        c = ctl.cfg
        self.critic = WorkerGroup(
            ArcherCriticWorker, c.critic.world_size, c.critic.num_cpus, c.critic.num_gpus, "archer_critic",
            model_path=ctl.policy_path, model_cfg=c.model, worker_cfg=c.critic, optim_cfg=c.optim,
            algo_cfg=c.algorithm, seed=c.trainer.seed, tau=c.archer.tau, critic_path=c.archer.critic_path,
        )  # fmt: skip
        ctl.extra_groups["archer_critic"] = self.critic
        self.buffer = ReplayBuffer(c.archer.buffer_size, c.trainer.seed)

    # ---- critic --------------------------------------------------------------------------------
    def policy_actions(self, ctl: Controller, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """a' ~ pi(. | s) for every state, from the rollout engines (which hold the current policy)."""
        n = len(ctl.rollout_workers)
        c = ctl.cfg.rollout
        parts = ray.get(
            [
                w.run.remote(sample_turns, prompts[i::n], c.max_tokens_per_turn, c.temperature, seed + i)
                for i, w in enumerate(ctl.rollout_workers)
                if prompts[i::n]
            ]
        )
        out: list[list[int]] = [[] for _ in prompts]
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def critic_step(self, ctl: Controller, trajs: list[Trajectory], seed: int) -> dict[str, float]:
        """One TD update on a sample of the buffer."""
        c = ctl.cfg.archer
        batch = collate(trajs, ctl.pad_id)
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
        actions = self.policy_actions(ctl, states, seed)
        pi = _pad([s + a for s, a in zip(states, actions, strict=True)], ctl.pad_id)
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

    # ---- actor ---------------------------------------------------------------------------------
    def step_advantages(self, ctl: Controller, batch: Any, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T]: ``min(Q1, Q2)(s_k, a_k) - V(s_k)`` of the online critic on step k's action tokens."""
        heads = self.critic.gather_rows("compute_heads", data)
        pos = step_positions(batch)
        q1 = gather_steps(heads[..., 0], pos["action"])
        q2 = gather_steps(heads[..., 1], pos["action"])
        v = gather_steps(heads[..., 2], pos["state"])
        adv = utterance_advantages(q1, q2, v, batch.step_mask)
        return broadcast_step_values(adv, action_step_index(batch))

    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        from steprl.controller import episode_metrics, tensors_of

        c = ctl.cfg
        times: dict[str, float] = {}
        t0 = time.time()
        seed = ctl.rollout_seed(it)
        trajs, rstats = ctl.generate(ctl.next_tasks(), c.rollout.group_size, c.rollout.temperature, seed)
        times["time/rollout"] = time.time() - t0
        self.buffer.add(trajs)
        t1 = time.time()
        critic: dict[str, list[float]] = {}
        for u in range(c.archer.critic_updates):
            sample = self.buffer.sample(c.archer.batch_size)
            for k, v in self.critic_step(ctl, sample, seed + 31 * (u + 1)).items():
                critic.setdefault(k, []).append(v)
        metrics = {k: sum(v) / len(v) for k, v in critic.items()}
        times["time/critic"] = time.time() - t1
        if it > c.archer.actor_warmup:
            t2 = time.time()
            batch = collate(trajs, ctl.pad_id)
            data = tensors_of(batch)
            kl_metrics, _ = ctl.logprobs(batch, data)
            metrics.update(kl_metrics)
            adv = self.step_advantages(ctl, batch, data)
            metrics["advantage_abs_mean"] = float(masked_mean(adv.abs(), batch.action_mask))
            data["advantages"] = (
                masked_whiten(adv, batch.action_mask) if c.algorithm.whiten_advantages else adv
            )
            metrics.update(ctl.actor.mean_metrics("update_policy", data, kl_coef=ctl.kl_ctl.value))
            if "kl" in metrics:
                ctl.kl_ctl.update(metrics["kl"], batch.size)
            times["time/update"] = time.time() - t2
            times["time/sync"] = ctl.sync_weights()
        times["time/iteration"] = time.time() - t0
        return {
            **episode_metrics(trajs, prefix="train/"),
            **metrics,
            **times,
            "kl_coef": ctl.kl_ctl.value,
            "archer/buffer_trajectories": float(len(self.buffer)),
            "archer/actor_updated": float(it > c.archer.actor_warmup),
            "rollout/tokens_per_second": rstats["rollout/generated_tokens"]
            / max(rstats["rollout/seconds"], 1e-9),
        }
