"""The controller: one loop, rollout -> reward -> advantage -> update -> weight sync -> log/checkpoint.

It only moves batches and calls workers; every formula lives in ``steprl.algorithms``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch

from steprl.algorithms.advantages import AdvantageConfig, compute_advantages
from steprl.algorithms.kl import AdaptiveKLController, FixedKLController, apply_kl_in_reward
from steprl.algorithms.losses import kl_penalty, masked_mean, masked_whiten
from steprl.algorithms.rewards import RunningRewardNormalizer
from steprl.config import StepRLConfig
from steprl.data.parquet_io import write_trajectories_parquet
from steprl.episode import EpisodeBudget
from steprl.logger import MetricsLogger
from steprl.progress import Progress, StageTimer, with_overhead
from steprl.protocol import Batch, Trajectory, collate
from tools_env.suite import Task, get_suite
from workers.fsdp import ActorWorker, CriticWorker, RefWorker
from workers.group import WorkerGroup
from workers.reward import RewardWorker, merge_metrics, reward_env
from workers.rollout import RolloutWorker


class Controller:
    def __init__(self, cfg: StepRLConfig, model_path: str, run_dir: Path) -> None:
        self.cfg, self.model_path, self.run_dir = cfg, model_path, run_dir
        self.suite = get_suite(cfg.data.suite)
        self.train_tasks = self.suite.tasks("train", cfg.data.train_tasks, cfg.data.seed)
        self.test_tasks = self.suite.tasks("test", cfg.data.test_tasks, cfg.data.seed)
        self.rng = random.Random(cfg.trainer.seed)
        self.cursor = 0
        self.rng.shuffle(self.train_tasks)
        self.logger = MetricsLogger(run_dir, cfg.trainer.logger)
        self.progress = Progress(enabled=cfg.trainer.progress)
        self.timer = StageTimer()  # seconds per stage of the current iteration (time/<stage>)
        self.sync_dir = Path(
            tempfile.mkdtemp(prefix="steprl-sync-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        )
        a = cfg.algorithm
        self.kl_ctl = (
            AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
            if a.kl_target
            else FixedKLController(a.kl_coef)
        )
        self.adv_cfg = AdvantageConfig(
            estimator=a.estimator, gamma=a.gamma, lam=a.lam, token_level_refine=a.token_level_refine
        )
        self.reward_normalizer = (
            RunningRewardNormalizer(center=cfg.reward.normalize == "center")
            if cfg.reward.normalize != "none"
            else None
        )
        self.actor = self.ref = self.critic = None
        self.tool_server = None
        self.tool_server_url = cfg.rollout.tool_server
        if cfg.rollout.tool_server == "local":  # a FastAPI tool server in its own process, on loopback
            from tools_env.server import serve

            self.tool_server = serve(host="127.0.0.1", port=0, background="process")
            self.tool_server_url = self.tool_server.url
        self.rollout_workers: list[Any] = []
        self.reward_workers: list[Any] = []
        self.reward_metrics: dict[str, float] = {}  # of the last scored batch (reward workers' counters)
        self.pad_id = 0
        self.sft_data: list[Trajectory] = []  # the SFT cold-start set, when there was one
        # worker groups a method starts itself (e.g. ArCHer's critic): saved (save_hf) into every
        # checkpoint under their name, and shut down with the rest
        self.extra_groups: dict[str, WorkerGroup] = {}
        self.policy_path = model_path  # what the rollout/ref/critic workers started from (after SFT)

    # ---- setup -------------------------------------------------------------------------------
    def _group(self, cls: type, wcfg: Any, path: str, name: str) -> WorkerGroup:
        c = self.cfg
        return WorkerGroup(
            cls,
            wcfg.world_size,
            wcfg.num_cpus,
            wcfg.num_gpus,
            name,
            model_path=path,
            model_cfg=c.model,
            worker_cfg=wcfg,
            optim_cfg=c.optim,
            algo_cfg=c.algorithm,
            seed=c.trainer.seed,
        )

    def start_actor(self, actor_cls: type | None = None) -> None:
        """The actor group; a method may bring its own ActorWorker subclass (e.g. with a DPO step)."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.actor = self._group(actor_cls or ActorWorker, self.cfg.actor, self.model_path, "actor")

    def start_rest(self, policy_path: str, need_ref: bool = False) -> None:
        """Reference, critic, reward and rollout workers, all starting from the (SFT) policy."""
        c = self.cfg
        self.policy_path = policy_path
        if c.algorithm.kl_coef > 0 or need_ref:
            self.ref = self._group(RefWorker, c.ref, policy_path, "ref")
        if c.algorithm.use_critic:
            self.critic = self._group(CriticWorker, c.critic, policy_path, "critic")
        reward_cls = ray.remote(num_cpus=0)(RewardWorker)
        self.reward_workers = [
            reward_cls.remote(c.reward, reward_env(c.reward)) for _ in range(c.reward.num_workers)
        ]
        budget = EpisodeBudget(
            c.rollout.max_turns, c.rollout.max_response_tokens, c.rollout.max_tokens_per_turn
        )
        engine_kwargs = {"dtype": c.model.dtype, "seed": c.trainer.seed}
        if c.rollout.engine == "vllm":
            engine_kwargs.update(
                max_model_len=c.rollout.max_model_len, gpu_memory_utilization=c.rollout.gpu_memory_utilization
            )
        rollout_cls = ray.remote(num_cpus=c.rollout.num_cpus)(RolloutWorker)
        self.rollout_workers = [
            rollout_cls.remote(
                policy_path,
                c.rollout.engine,
                engine_kwargs,
                c.rollout.tool_format,
                self.tool_server_url,
                [c.data.suite],
                budget,
            )
            for _ in range(c.rollout.num_workers)
        ]
        startup = ray.get([w.ready.remote() for w in self.rollout_workers])
        self.logger.log(0, {"setup/engine_startup_seconds": max(startup)})

    # ---- stages ------------------------------------------------------------------------------
    def generate(
        self, tasks: list[Task], group_size: int, temperature: float, seed: int
    ) -> tuple[list[Trajectory], dict]:
        """Episodes for every task ``group_size`` times, spread over the rollout workers."""
        expanded = [t for t in tasks for _ in range(group_size)]
        groups = [t.task_id for t in expanded]
        n = len(self.rollout_workers)
        chunks = [list(range(i, len(expanded), n)) for i in range(n)]
        futures = [
            w.rollout.remote(
                [expanded[j].to_dict() for j in idx], temperature, seed + 1000 * i, [groups[j] for j in idx]
            )
            for i, (w, idx) in enumerate(zip(self.rollout_workers, chunks, strict=True))
        ]
        results = ray.get(futures)
        trajs: list[Trajectory | None] = [None] * len(expanded)
        stats: dict[str, float] = {"rollout/generated_tokens": 0, "rollout/seconds": 0.0}
        for idx, (part, st) in zip(chunks, results, strict=True):
            for j, t in zip(idx, part, strict=True):
                trajs[j] = t
            stats["rollout/generated_tokens"] += st["rollout/generated_tokens"]
            stats["rollout/seconds"] = max(stats["rollout/seconds"], st["rollout/seconds"])
        with self.timer("reward"):
            scored = self.score([t for t in trajs if t is not None], expanded)
        return scored, stats

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[Trajectory]:
        n = len(self.reward_workers)
        parts = ray.get(
            [
                w.score.remote(trajs[i::n], [t.to_dict() for t in tasks[i::n]])
                for i, w in enumerate(self.reward_workers)
            ]
        )
        out: list[Trajectory] = [None] * len(trajs)  # type: ignore[list-item]
        for i, part in enumerate(parts):
            out[i::n] = part
        self.reward_metrics = merge_metrics(ray.get([w.pop_metrics.remote() for w in self.reward_workers]))
        return out

    def advantages(self, batch: Batch, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """Log-probs, reference KL, values and advantages for a collated batch (in place on ``data``)."""
        metrics, extra = self.logprobs(batch, data)
        mask = batch.action_mask
        values = None
        if self.critic is not None:
            with self.timer("critic_forward"):
                values = self.critic.gather_rows("compute_values", data)
            data["old_values"] = values
        out = compute_advantages(batch, values, self.adv_cfg, extra_token_rewards=extra)
        adv = out.advantages
        if self.cfg.algorithm.whiten_advantages:
            adv = masked_whiten(adv, mask)
        data["advantages"], data["returns"], data["value_mask"] = adv, out.returns, out.value_mask
        metrics["advantage_abs_mean"] = float(masked_mean(out.advantages.abs(), mask))
        metrics["rollout_vs_actor_logprob_diff"] = float(
            masked_mean((data["old_logprobs"] - batch.rollout_logprobs).abs(), mask)
        )
        if values is not None:
            metrics["value_mean"] = float(masked_mean(values, out.value_mask))
        return metrics

    def logprobs(
        self, batch: Batch, data: dict[str, torch.Tensor]
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Actor (and reference) log-probs into ``data``; returns the KL metric and the KL token rewards
        (``-coef * kl`` on action tokens when ``algorithm.kl_in == "reward"``, else None)."""
        with self.timer("actor_forward"):
            data["old_logprobs"] = self.actor.gather_rows("compute_logprobs", data)
        metrics: dict[str, float] = {}
        extra = None
        if self.ref is not None:
            with self.timer("ref_forward"):
                data["ref_logprobs"] = self.ref.gather_rows("compute_logprobs", data)
            kl = kl_penalty(data["old_logprobs"], data["ref_logprobs"], self.cfg.algorithm.kl_kind)
            metrics["kl"] = float(masked_mean(kl, batch.action_mask))
            if self.cfg.algorithm.kl_in == "reward":
                extra = apply_kl_in_reward(torch.zeros_like(kl), kl, self.kl_ctl.value, batch.action_mask)
        return metrics, extra

    def sync_weights(self) -> float:
        t0 = time.time()
        self.actor.call_all("save_hf", str(self.sync_dir))
        ray.get([w.load_weights.remote(str(self.sync_dir)) for w in self.rollout_workers])
        return time.time() - t0

    def next_tasks(self) -> list[Task]:
        k = self.cfg.trainer.tasks_per_iteration
        if self.cursor + k > len(self.train_tasks):
            self.rng.shuffle(self.train_tasks)
            self.cursor = 0
        tasks = self.train_tasks[self.cursor : self.cursor + k]
        self.cursor += k
        return tasks

    def evaluate(self, tag: str, seed: int) -> dict[str, float]:
        c = self.cfg.rollout
        trajs, _ = self.generate(self.test_tasks, 1, c.eval_temperature, seed)
        return episode_metrics(trajs, prefix=f"eval/{tag}/")

    def peak_memory(self) -> dict[str, float]:
        """``memory/<worker>_peak_mb`` (and ``_cuda_peak_mb``): the largest peak over each kind's processes."""
        groups = {"actor": self.actor, "ref": self.ref, "critic": self.critic}
        handles = {k: g.workers for k, g in groups.items() if g is not None}
        handles.update(rollout=self.rollout_workers, reward=self.reward_workers)
        refs = [(k, w.peak_memory_mb.remote()) for k, ws in handles.items() for w in ws]
        out: dict[str, float] = {}
        for (kind, _), peaks in zip(refs, ray.get([r for _, r in refs]), strict=True):
            for name, mb in peaks.items():
                key = f"memory/{kind}_{name}"
                out[key] = max(out.get(key, 0.0), mb)
        return out

    # ---- the loop ----------------------------------------------------------------------------
    def iteration(self, it: int) -> dict[str, float]:
        times: dict[str, float] = {}
        self.timer.reset()  # stages run between iterations (evaluation) do not count
        t0 = time.time()
        trajs, rstats = self.generate(
            self.next_tasks(),
            self.cfg.rollout.group_size,
            self.cfg.rollout.temperature,
            seed=self.cfg.trainer.seed * 100003 + it * 977,
        )
        times["time/rollout"] = time.time() - t0
        reward_metrics = self.reward_metrics
        if self.cfg.trainer.save_rollouts:  # the scored batch, token-exact, as an offline dataset
            write_trajectories_parquet(trajs, self.run_dir / "rollouts" / f"iter_{it:05d}.parquet")
        batch = collate(trajs, self.pad_id)
        if self.reward_normalizer is not None:  # running statistics over all step rewards seen so far
            self.reward_normalizer.update(batch.step_rewards[batch.step_mask])
            batch.step_rewards = self.reward_normalizer.normalize(batch.step_rewards) * batch.step_mask
        data = tensors_of(batch)
        t1 = time.time()
        metrics = self.advantages(batch, data)
        times["time/advantage"] = time.time() - t1
        t2 = time.time()
        if self.critic is not None:
            with self.timer("critic_update"):
                metrics.update(self.critic.mean_metrics("update_critic", data))
        with self.timer("actor_update"):
            metrics.update(self.actor.mean_metrics("update_policy", data, kl_coef=self.kl_ctl.value))
        times["time/update"] = time.time() - t2
        if "kl" in metrics:
            self.kl_ctl.update(metrics["kl"], batch.size)
        times["time/sync"] = self.sync_weights()
        metrics.update(self.peak_memory())
        times.update(self.timer.reset())
        times["time/rollout"] -= times.get("time/reward", 0.0)  # generate() scores too
        times["time/iteration"] = time.time() - t0
        times = with_overhead(times)  # time/overhead: the controller's own share of the iteration
        gen = rstats["rollout/generated_tokens"]
        return {
            **episode_metrics(trajs, prefix="train/"),
            **metrics,
            **times,
            **reward_metrics,
            "kl_coef": self.kl_ctl.value,
            "rollout/tokens_per_second": gen / max(rstats["rollout/seconds"], 1e-9),
        }

    def save_checkpoint(self, tag: str) -> Path:
        """A complete checkpoint directory, written under a temporary name and renamed when whole."""
        final = self.run_dir / "checkpoints" / tag
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.actor.call_all("save_hf", str(tmp / "actor"))
        self.tokenizer.save_pretrained(tmp / "actor")
        if self.critic is not None:
            self.critic.call_all("save_hf", str(tmp / "critic"))
        for name, group in self.extra_groups.items():
            group.call_all("save_hf", str(tmp / name))
        (tmp / "trainer_state.json").write_text(
            json.dumps(
                {
                    "tag": tag,
                    "cursor": self.cursor,
                    "kl": self.kl_ctl.state_dict(),
                    "reward_normalizer": self.reward_normalizer.state_dict()
                    if self.reward_normalizer
                    else None,
                }
            )
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def shutdown(self) -> None:
        for g in (self.actor, self.ref, self.critic, *self.extra_groups.values()):
            if g is not None:
                g.shutdown()
        for w in self.rollout_workers + self.reward_workers:
            ray.kill(w)
        if self.tool_server is not None:
            self.tool_server.stop()
        self.logger.close()
        shutil.rmtree(self.sync_dir, ignore_errors=True)


def tensors_of(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in asdict(batch).items() if isinstance(v, torch.Tensor)}


def episode_metrics(trajs: list[Trajectory], prefix: str) -> dict[str, float]:
    n = max(1, len(trajs))
    tool_steps = [s for t in trajs for s in t.steps if not s.is_final]
    out = {
        f"{prefix}pass_rate": sum(t.is_solved for t in trajs) / n,
        f"{prefix}reward": sum(sum(t.step_rewards) for t in trajs) / n,
        f"{prefix}steps": sum(t.num_steps for t in trajs) / n,
        f"{prefix}tool_success": sum(s.succ_calling for s in tool_steps) / max(1, len(tool_steps)),
        f"{prefix}response_tokens": sum(len(t.response_ids) for t in trajs) / n,
    }
    for reason in sorted({t.end_reason for t in trajs}):
        out[f"{prefix}end/{reason}"] = sum(t.end_reason == reason for t in trajs) / n
    return out


def curve_keys() -> list[str]:
    return ["train/reward", "train/pass_rate", "eval/pass_rate"]
