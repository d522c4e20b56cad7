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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch

from steprl.algorithms.advantages import AdvantageConfig, compute_advantages
from steprl.algorithms.kl import AdaptiveKLController, FixedKLController, apply_kl_in_reward
from steprl.algorithms.losses import kl_penalty, masked_mean, masked_whiten
from steprl.algorithms.off_policy import truncated_is_weights
from steprl.algorithms.rewards import RunningRewardNormalizer
from steprl.checkpoint import (
    FORMAT_VERSION,
    STATE_FILE,
    CheckpointError,
    python_rng_from_json,
    python_rng_to_json,
    read_state,
    write_checkpoint,
)
from steprl.config import StepRLConfig
from steprl.data.parquet_io import write_trajectories_parquet
from steprl.episode import EpisodeBudget
from steprl.fault import LocalToolServer, WorkerPool, merge_by_id, split
from steprl.logger import MetricsLogger
from steprl.progress import Progress, StageTimer, with_overhead
from steprl.protocol import Batch, Trajectory, collate
from tools_env.suite import Task, get_suite
from workers.fsdp import ActorWorker, CriticWorker, RefWorker
from workers.group import Placement, WorkerGroup, node_ids, run_bundles
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
        # colocate / spread over nodes; reward workers (no CPU of their own) share the rollout bundles
        self.placement = Placement(cfg.ray.placement, run_bundles(cfg), share={"reward": "rollout"})
        self.tool_server = None
        self.tool_server_url = cfg.rollout.tool_server
        if cfg.rollout.tool_server == "local":  # a FastAPI tool server in its own process, on loopback
            self.tool_server = LocalToolServer(cfg.trainer.max_worker_restarts)  # restarted if it dies
            self.tool_server_url = self.tool_server.url
        self.rollout_workers: list[Any] = []
        self.reward_workers: list[Any] = []
        self.reward_metrics: dict[str, float] = {}  # of the last scored batch (reward workers' counters)
        self.rollout_pool: WorkerPool | None = None  # rollout / reward workers, re-created if they fail
        self.reward_pool: WorkerPool | None = None
        self.weights_synced = False
        self.pad_id = 0
        self.sft_data: list[Trajectory] = []  # the SFT cold-start set, when there was one
        # worker groups a method starts itself (e.g. ArCHer's critic): saved (save_hf) into every
        # checkpoint under their name, and shut down with the rest
        self.extra_groups: dict[str, WorkerGroup] = {}
        self.policy_path = model_path  # what the rollout/ref/critic workers started from (after SFT)
        # asynchronous rollouts (trainer.async_rollout): the next batch generates in a driver thread while
        # this one trains; versions count actor updates and what the rollout engines hold
        self.actor_version = self.rollout_version = 0
        self.pending: Future | None = None  # (trajectories, stats, policy version) of the next batch
        self.pending_tasks: list[Task] = []
        self.resume_tasks: list[Task] = []  # the in-flight batch's tasks at the checkpoint (resume)
        self._background = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="steprl-rollout")
            if cfg.trainer.async_rollout
            else None
        )
        self.use_is = cfg.algorithm.rollout_is == "on" or (
            cfg.algorithm.rollout_is == "auto" and cfg.trainer.async_rollout
        )

    # ---- setup -------------------------------------------------------------------------------
    def _group(self, cls: type, wcfg: Any, path: str, name: str) -> WorkerGroup:
        c = self.cfg
        return WorkerGroup(
            cls,
            wcfg.world_size,
            wcfg.num_cpus,
            wcfg.num_gpus,
            name,
            placement=self.placement,
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
        self.reward_pool = WorkerPool(
            "reward",
            lambda slot: reward_cls.options(**self.placement.options("reward", slot)).remote(
                c.reward, reward_env(c.reward)
            ),
            c.reward.num_workers,
            c.trainer.max_worker_restarts,
        )
        self.reward_workers = self.reward_pool.workers  # the same list: replaced workers show up here
        budget = EpisodeBudget(
            c.rollout.max_turns, c.rollout.max_response_tokens, c.rollout.max_tokens_per_turn,
            max_prompt_tokens=c.rollout.max_model_len - c.rollout.max_response_tokens,
        )  # fmt: skip
        engine_kwargs = {"dtype": c.model.dtype, "seed": c.trainer.seed}
        if c.rollout.engine == "vllm":
            engine_kwargs.update(
                max_model_len=c.rollout.max_model_len, gpu_memory_utilization=c.rollout.gpu_memory_utilization
            )
        rollout_cls = ray.remote(num_cpus=c.rollout.num_cpus)(RolloutWorker)

        def new_rollout_worker(slot: int) -> Any:
            return rollout_cls.options(**self.placement.options("rollout", slot)).remote(
                policy_path,
                c.rollout.engine,
                engine_kwargs,
                c.rollout.tool_format,
                self.tool_server_url,
                [c.data.suite],
                budget,
            )

        def prepare_rollout_worker(worker: Any) -> None:  # a replacement gets the current policy
            ray.get(worker.ready.remote())
            if self.weights_synced:
                ray.get(worker.load_weights.remote(str(self.sync_dir)))

        self.rollout_pool = WorkerPool(
            "rollout",
            new_rollout_worker,
            c.rollout.num_workers,
            c.trainer.max_worker_restarts,
            prepare=prepare_rollout_worker,
            tool_server=self.tool_server,
        )
        self.rollout_workers = self.rollout_pool.workers  # the same list: replaced workers show up here
        startup = ray.get([w.ready.remote() for w in self.rollout_workers])
        self.logger.log(0, {"setup/engine_startup_seconds": max(startup)})

    # ---- stages ------------------------------------------------------------------------------
    def generate(
        self,
        tasks: list[Task],
        group_size: int,
        temperature: float,
        seed: int,
        timer: StageTimer | None = None,
    ) -> tuple[list[Trajectory], dict]:
        """Episodes for every task ``group_size`` times, spread over the rollout workers.

        Episode ``(task index, sample index)`` lands in a chunk fixed in advance and seeded by it; a
        chunk whose worker fails runs again on a fresh one (``steprl.fault``); results merge by id.
        """
        ids = [(ti, si) for ti in range(len(tasks)) for si in range(group_size)]
        chunks = split(ids, len(self.rollout_pool))

        def submit(worker: Any, i: int, chunk: list[tuple[int, int]]) -> Any:
            return worker.rollout.remote(
                [tasks[ti].to_dict() for ti, _ in chunk],
                temperature,
                seed + 1000 * i,
                [tasks[ti].task_id for ti, _ in chunk],
            )

        results = self.rollout_pool.run(chunks, submit)
        by_id = merge_by_id(chunks, [part for part, _ in results])
        trajs = [by_id[k] for k in ids]
        for (ti, si), traj in zip(ids, trajs, strict=True):
            traj.meta["episode_id"] = [ti, si]
        stats: dict[str, float] = {
            "rollout/generated_tokens": sum(st["rollout/generated_tokens"] for _, st in results),
            "rollout/seconds": max((st["rollout/seconds"] for _, st in results), default=0.0),
        }
        with (timer or self.timer)("reward"):
            scored = self.score(trajs, [tasks[ti] for ti, _ in ids])
        return scored, stats

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[Trajectory]:
        """Rewards for every trajectory, spread over the reward workers (re-run if one fails)."""
        ids = list(range(len(trajs)))
        chunks = split(ids, len(self.reward_pool))

        def submit(worker: Any, _i: int, chunk: list[int]) -> Any:
            return worker.score.remote([trajs[j] for j in chunk], [tasks[j].to_dict() for j in chunk])

        by_id = merge_by_id(chunks, self.reward_pool.run(chunks, submit))
        out = [by_id[j] for j in ids]
        self.reward_metrics = merge_metrics(self._pop_reward_metrics())
        return out

    def _pop_reward_metrics(self) -> list[dict[str, float]]:
        """Each reward worker's counters; a worker that died after scoring loses its counters (not
        its rewards, which are already here) and is replaced by the pool on its next call."""
        refs = [w.pop_metrics.remote() for w in self.reward_workers]
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                continue
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
        """Actor (and reference) log-probs into ``data``, and the truncated IS weights when they are on;
        returns the KL metric and the KL token rewards (``-coef * kl`` on action tokens when
        ``algorithm.kl_in == "reward"``, else None)."""
        with self.timer("actor_forward"):
            data["old_logprobs"] = self.actor.gather_rows("compute_logprobs", data)
        metrics: dict[str, float] = {}
        weights = None
        if self.use_is:  # rollouts of an older policy: weight each token's loss by min(pi_old/pi_rollout, C)
            weights, is_metrics = truncated_is_weights(
                data["old_logprobs"],
                batch.rollout_logprobs,
                batch.action_mask,
                self.cfg.algorithm.rollout_is_cap,
            )
            data["is_weights"] = weights
            metrics.update({f"offpolicy/{k}": v for k, v in is_metrics.items()})
        extra = None
        if self.ref is not None:
            with self.timer("ref_forward"):
                data["ref_logprobs"] = self.ref.gather_rows("compute_logprobs", data)
            kl = kl_penalty(data["old_logprobs"], data["ref_logprobs"], self.cfg.algorithm.kl_kind)
            # an estimate under pi_old: the sampled tokens came from the rollout policy
            metrics["kl"] = float(masked_mean(kl if weights is None else kl * weights, batch.action_mask))
            if self.cfg.algorithm.kl_in == "reward":
                extra = apply_kl_in_reward(torch.zeros_like(kl), kl, self.kl_ctl.value, batch.action_mask)
        return metrics, extra

    def sync_weights(self) -> float:
        t0 = time.time()
        self.actor.call_all("save_hf", str(self.sync_dir))
        self.weights_synced = True  # from now on a re-created rollout worker loads these weights too
        ray.get([w.load_weights.remote(str(self.sync_dir)) for w in self.rollout_workers])
        self.rollout_version = self.actor_version
        return time.time() - t0

    # ---- asynchronous rollouts ---------------------------------------------------------------
    def rollout_batch(self, it: int) -> tuple[list[Trajectory], dict, dict[str, float]]:
        """This iteration's scored rollouts.

        Synchronous: generated now by the current policy. Asynchronous (``trainer.async_rollout``): the
        batch that generated during the previous iteration's training (one policy update behind; the
        truncated IS weights correct for it), and the next batch starts generating now, in a driver
        thread, overlapping this iteration's forward passes and updates. Returns the trajectories, rollout
        stats and the reward workers' metrics of this batch (not of the one generating meanwhile).
        """
        c = self.cfg
        if self._background is None:
            trajs, stats = self.generate(
                self._draw_tasks(), c.rollout.group_size, c.rollout.temperature, self.rollout_seed(it)
            )
            return trajs, stats, self.reward_metrics
        if self.pending is None:  # the first iteration (or the first after a resume)
            self._submit(it)
        t0 = time.time()
        trajs, stats, version, reward_metrics = self.pending.result()
        wait = time.time() - t0
        self.pending = None
        sync = self.ensure_synced()  # the engines are idle: give them the newest policy
        if it < c.trainer.total_iterations:
            self._submit(it + 1)
        stats = {
            **stats,
            "async/rollout_wait_seconds": wait,
            "async/staleness": float(self.actor_version - version),
            "time/sync": sync,
        }
        return trajs, stats, reward_metrics

    def _draw_tasks(self) -> list[Task]:
        """The next batch's tasks: first those in flight when the resumed checkpoint was written."""
        tasks, self.resume_tasks = (self.resume_tasks or self.next_tasks()), []
        return tasks

    def rollout_seed(self, it: int) -> int:
        """The sampling seed of iteration ``it``'s training rollouts (a pure function: exact resume)."""
        return self.cfg.trainer.seed * 100003 + it * 977

    def _submit(self, it: int) -> None:
        c = self.cfg
        tasks = self.pending_tasks = self._draw_tasks()
        version = self.rollout_version

        def work() -> tuple[list[Trajectory], dict, int, dict[str, float]]:
            t0 = time.time()
            trajs, stats = self.generate(
                tasks, c.rollout.group_size, c.rollout.temperature, self.rollout_seed(it), timer=StageTimer()
            )
            # the reward metrics this thread just set (the main thread never scores while a batch is in flight)
            return (
                trajs,
                {**stats, "async/background_seconds": time.time() - t0},
                version,
                self.reward_metrics,
            )

        self.pending = self._background.submit(work)

    def ensure_synced(self) -> float:
        """Sync the actor's weights to the rollout engines if they hold an older policy (seconds taken)."""
        return self.sync_weights() if self.actor_version > self.rollout_version else 0.0

    def wait_rollouts(self) -> None:
        """Let an in-flight batch finish (it is kept for the next iteration) and sync the newest policy:
        evaluation and the end of training need the engines idle and current."""
        if self.pending is not None:
            self.pending.result()
        self.ensure_synced()

    def fault_metrics(self) -> dict[str, float]:
        """Restarts so far (cumulative over the run) of rollout / reward workers and the tool server."""
        out = {
            "fault/rollout_restarts": float(sum(self.rollout_pool.restarts)) if self.rollout_pool else 0.0,
            "fault/reward_restarts": float(sum(self.reward_pool.restarts)) if self.reward_pool else 0.0,
        }
        if isinstance(self.tool_server, LocalToolServer):
            out["fault/tool_server_restarts"] = float(self.tool_server.epoch)
        return out

    def placement_report(self) -> dict[str, Any]:
        """The Ray node id of the driver and of every worker, by role (recorded in summary.json)."""
        groups = {"actor": self.actor, "ref": self.ref, "critic": self.critic, **self.extra_groups}
        handles = {k: g.workers for k, g in groups.items() if g is not None}
        handles.update(rollout=self.rollout_workers, reward=self.reward_workers)
        nodes = {k: node_ids(hs) for k, hs in handles.items()}
        return {
            "strategy": self.cfg.ray.placement,
            "driver": ray.get_runtime_context().get_node_id(),
            "workers": nodes,
            "num_nodes": len({n for ns in nodes.values() for n in ns}),
        }

    def next_tasks(self) -> list[Task]:
        k = self.cfg.trainer.tasks_per_iteration
        if self.cursor + k > len(self.train_tasks):
            self.rng.shuffle(self.train_tasks)
            self.cursor = 0
        tasks = self.train_tasks[self.cursor : self.cursor + k]
        self.cursor += k
        return tasks

    def evaluate(self, tag: str, seed: int) -> dict[str, float]:
        """Held-out metrics of the policy as sampled (``rollout.eval_samples`` per task at
        ``rollout.eval_temperature``: what RL optimizes), plus greedy decoding as ``greedy_*``."""
        c = self.cfg.rollout
        self.wait_rollouts()
        trajs, _ = self.generate(self.test_tasks, c.eval_samples, c.eval_temperature, seed)
        out = episode_metrics(trajs, prefix=f"eval/{tag}/")
        if c.eval_temperature > 0:
            greedy, _ = self.generate(self.test_tasks, 1, 0.0, seed)
            g = episode_metrics(greedy, prefix="")
            out.update({f"eval/{tag}/greedy_{k}": g[k] for k in ("pass_rate", "tool_success", "steps")})
        return out

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
    def iteration(self, it: int, trajectories: list[Trajectory] | None = None) -> dict[str, float]:
        """One PPO-family iteration; ``trajectories`` (already scored, e.g. offline data) replace the
        rollout and reward stages."""
        times: dict[str, float] = {}
        self.timer.reset()  # stages run between iterations (evaluation) do not count
        t0 = time.time()
        if trajectories is None:
            trajs, rstats, reward_metrics = self.rollout_batch(it)
        else:
            trajs, rstats = trajectories, {"rollout/generated_tokens": 0, "rollout/seconds": 0.0}
            reward_metrics = {}
        times["time/rollout"] = time.time() - t0
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
        self.actor_version += 1
        if self._background is None:
            times["time/sync"] = self.sync_weights()
        else:  # the sync ran before the next batch was submitted (rollout_batch), inside time/rollout
            times["time/sync"] = rstats.pop("time/sync", 0.0)
            times["time/rollout"] -= times["time/sync"]
        metrics.update(self.peak_memory())
        times.update(self.timer.reset())
        times["time/rollout"] -= times.get("time/reward", 0.0)  # generate() scores too
        times["time/iteration"] = time.time() - t0
        times = with_overhead(times)  # time/overhead: the controller's own share of the iteration
        gen = rstats["rollout/generated_tokens"]
        async_stats = {k: v for k, v in rstats.items() if k.startswith("async/")}
        return {
            **async_stats,
            **episode_metrics(trajs, prefix="train/"),
            **metrics,
            **times,
            **reward_metrics,
            **self.fault_metrics(),
            "kl_coef": self.kl_ctl.value,
            "rollout/tokens_per_second": gen / max(rstats["rollout/seconds"], 1e-9),
        }

    def save_checkpoint(self, tag: str, iteration: int = 0) -> Path:
        """Everything an exact resume needs, written atomically (layout and protocol:
        ``steprl.checkpoint``). The ``sft`` checkpoint also marks the SFT cold start as done."""
        if tag == "sft":
            self.sft_done = True

        def fill(tmp: Path) -> None:
            self.actor.call_all("save_hf", str(tmp / "actor"))
            self.tokenizer.save_pretrained(tmp / "actor")
            self.actor.call_all("save_state", str(tmp / "actor_state"))
            if self.critic is not None:
                self.critic.call_all("save_hf", str(tmp / "critic"))
                self.critic.call_all("save_state", str(tmp / "critic_state"))
            for name, group in self.extra_groups.items():
                group.call_all("save_hf", str(tmp / name))
            state = {"tag": tag, "iteration": iteration, **self.state_dict()}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            torch.save({"torch": torch.get_rng_state()}, tmp / "controller_rng.pt")

        meta = {"tag": tag, "iteration": iteration}
        return write_checkpoint(self.run_dir / "checkpoints" / tag, fill, meta)

    def state_dict(self) -> dict[str, Any]:
        """The controller's own state: data cursor and task order, RNG, KL coefficient, reward stats."""
        return {
            "format": FORMAT_VERSION,
            "cursor": self.cursor,
            "task_order": [t.task_id for t in self.train_tasks],
            "python_rng": python_rng_to_json(self.rng.getstate()),
            "kl": self.kl_ctl.state_dict(),
            "reward_normalizer": self.reward_normalizer.state_dict() if self.reward_normalizer else None,
            "sft_done": getattr(self, "sft_done", False),
            # asynchronous rollouts: the tasks of the batch in flight (drawn, not yet trained on)
            "pending_tasks": [t.task_id for t in self.pending_tasks] if self.pending is not None else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        by_id = {t.task_id: t for t in self.train_tasks}
        if sorted(by_id) != sorted(state["task_order"]):
            raise CheckpointError("checkpoint's training tasks differ from this config's (data.* changed?)")
        self.train_tasks = [by_id[i] for i in state["task_order"]]
        self.cursor = int(state["cursor"])
        self.rng.setstate(python_rng_from_json(state["python_rng"]))
        self.kl_ctl.load_state_dict(state["kl"])
        if self.reward_normalizer is not None and state.get("reward_normalizer"):
            self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        self.sft_done = bool(state.get("sft_done", False))
        self.resume_tasks = [by_id[i] for i in state.get("pending_tasks", [])]

    def restore(self, ckpt: Path) -> dict[str, Any]:
        """Continue from ``ckpt`` once the workers run: actor/critic model + optimizer + RNG states,
        the controller's state, and the rollout engines' weights. Returns the trainer state."""
        state = read_state(ckpt)
        self.actor.call_all("load_state", str(ckpt / "actor_state"))
        if self.critic is not None and (ckpt / "critic_state").is_dir():
            self.critic.call_all("load_state", str(ckpt / "critic_state"))
        self.load_state_dict(state)
        torch.set_rng_state(torch.load(ckpt / "controller_rng.pt")["torch"])
        if state["iteration"] > 0 and self.rollout_workers:  # engines started from the SFT policy
            self.sync_weights()
        return state

    def set_reward_config(self, reward_cfg: Any) -> None:
        """Replace the reward workers with ones built from ``reward_cfg`` (a method that trains a reward
        model mid-run, e.g. CodeTool's PRM, switches a component to it). No config object is mutated."""
        reward_cls = ray.remote(num_cpus=0)(RewardWorker)

        def create(_slot: int) -> Any:
            return reward_cls.remote(reward_cfg, reward_env(reward_cfg))

        new = [create(i) for i in range(len(self.reward_workers))]
        ray.get([w.ready.remote() for w in new])
        for w in self.reward_workers:
            ray.kill(w)
        self.reward_workers[:] = new  # in place: the reward pool holds this same list
        if self.reward_pool is not None:
            self.reward_pool.create = create  # a restarted worker keeps the new configuration

    def shutdown(self) -> None:
        if self._background is not None:  # a batch still in flight (a failed run) is abandoned
            self._background.shutdown(wait=False, cancel_futures=True)
        for g in (self.actor, self.ref, self.critic, *self.extra_groups.values()):
            if g is not None:
                g.shutdown()
        for w in self.rollout_workers + self.reward_workers:
            ray.kill(w)
        if self.tool_server is not None:
            self.tool_server.stop()
        self.placement.remove()
        self.logger.close()
        shutil.rmtree(self.sync_dir, ignore_errors=True)


def tensors_of(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in asdict(batch).items() if isinstance(v, torch.Tensor)}


def episode_metrics(trajs: list[Trajectory], prefix: str) -> dict[str, float]:
    n = max(1, len(trajs))
    tool_steps = [s for t in trajs for s in t.steps if not (s.is_final or s.is_reply)]
    out = {
        f"{prefix}pass_rate": sum(t.is_solved for t in trajs) / n,
        f"{prefix}reward": sum(sum(t.step_rewards) for t in trajs) / n,
        f"{prefix}steps": sum(t.num_steps for t in trajs) / n,
        f"{prefix}tool_success": sum(s.succ_calling for s in tool_steps) / max(1, len(tool_steps)),
        f"{prefix}response_tokens": sum(len(t.response_ids) for t in trajs) / n,
        # cut by a budget (max_tokens / max_turns): kept in the batch, bootstrapped from V(last state)
        f"{prefix}truncated": sum(t.truncated for t in trajs) / n,
        f"{prefix}truncated_count": float(sum(t.truncated for t in trajs)),
        f"{prefix}episodes": float(len(trajs)),
    }
    turns = [v for t in trajs for v in t.meta.get("turn_scores") or []]
    if turns:  # conversations with a per-turn check: the share of answered user turns that passed
        out[f"{prefix}turn_pass_rate"] = sum(v >= 1.0 for v in turns) / len(turns)
    for reason in sorted({t.end_reason for t in trajs}):
        out[f"{prefix}end/{reason}"] = sum(t.end_reason == reason for t in trajs) / n
    return out


def curve_keys() -> list[str]:
    return ["train/reward", "train/pass_rate", "eval/pass_rate"]
