"""The controller: the loop's driver. It starts the workers, moves batches between them and keeps the
run's state; one iteration's stages are ``steprl.step``'s, a method's differences ``steprl.methods``'.

Every call to rollout and reward workers goes through their ``steprl.fault.WorkerPool`` (restart,
retry, merge by id). Asynchronous prefetch: ``steprl.prefetch``; checkpoint state:
``steprl.run_state``; reports: ``steprl.reports``; the SFT cold start: ``steprl.cold_start``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from steprl import reports
from steprl.algorithms.advantages import AdvantageConfig
from steprl.algorithms.kl import AdaptiveKLController, FixedKLController
from steprl.algorithms.rewards import RunningRewardNormalizer
from steprl.config import StepRLConfig
from steprl.episode import EpisodeBudget
from steprl.evaluation.metrics import episode_metrics
from steprl.fault import LocalToolServer, WorkerPool, merge_by_id, split
from steprl.logger import MetricsLogger
from steprl.prefetch import Prefetcher
from steprl.progress import Progress, StageTimer
from steprl.protocol import Trajectory
from steprl.step import Rollout
from tools_env.suite import Task, get_suite
from workers.fsdp import ActorWorker, CriticWorker, RefWorker
from workers.group import Placement, WorkerGroup, run_bundles
from workers.reward import RewardWorker, merge_metrics, reward_env
from workers.rollout import RolloutWorker
from workers.weight_sync import choose_mode, export_weights, load_weights_remote, sync_weights


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
            estimator=a.estimator, gamma=a.gamma, lam=a.lam, token_level_refine=a.token_level_refine,
            outcome=a.outcome, whiten=a.whiten_advantages,
        )  # fmt: skip
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
            self.tool_server_url = self.tool_server.client_url  # carries the server's random token
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
        self.resume_tasks: list[Task] = []  # the in-flight batch's tasks at the checkpoint (resume)
        self.sft_done = False  # the SFT cold start ran (checkpointed)
        self.prefetch = (
            Prefetcher(
                lambda tasks, it: self._rollout(tasks, it, StageTimer()),
                self.draw_tasks,
                self.ensure_synced,
                lambda: self.actor_version,
                cfg.trainer.total_iterations,
            )
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
            balance_rows=wcfg.balance_rows,
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
        self.reward_pool = WorkerPool(
            "reward",
            self._reward_factory(c.reward),
            c.reward.num_workers,
            c.trainer.max_worker_restarts,
            prepare=lambda w: ray.get(w.ready.remote()),
        )
        self.reward_workers = self.reward_pool.workers  # the same list: replaced workers show up here
        budget = EpisodeBudget(
            c.rollout.max_turns, c.rollout.max_response_tokens, c.rollout.max_tokens_per_turn,
            max_prompt_tokens=c.rollout.max_model_len - c.rollout.max_response_tokens,
        )  # fmt: skip
        engine_kwargs = {
            "dtype": c.model.dtype,
            "seed": c.trainer.seed,
            "attn_implementation": c.model.attn_implementation,
        }
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
                tool_prompt=c.model.tool_prompt,
                workers_per_node=c.rollout.num_workers,
            )

        def prepare_rollout_worker(worker: Any) -> None:  # a replacement gets the current policy
            ray.get(worker.ready.remote())
            if self.weights_synced:
                mode = choose_mode(c.rollout.weight_sync, self.actor, [worker])
                sync_weights(mode, self.actor, [worker], self.sync_dir)

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

    def fan_out(
        self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, seed: int
    ) -> tuple[list[list[int]], list[Any]]:
        """``fn(worker, [items in chunk i], *args, seed + 1000 * i)`` inside the rollout workers (their
        ``run``), over round-robin chunks fixed in advance: a chunk whose worker fails runs again, with
        the same seed, on a fresh one. Returns the chunks (item indices) and their results, in order."""
        chunks = split(list(range(len(items))), len(self.rollout_pool))

        def submit(worker: Any, i: int, chunk: list[int]) -> Any:
            return worker.run.remote(fn, [items[j] for j in chunk], *args, seed + 1000 * i)

        return chunks, self.rollout_pool.run(chunks, submit)

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

    def sync_weights(self) -> float:
        """The actor's weights into every rollout engine, by ``rollout.weight_sync`` (workers/weight_sync.py),
        the loads through the rollout pool (a worker that dies is re-created with these weights)."""
        t0 = time.time()
        mode = choose_mode(self.cfg.rollout.weight_sync, self.actor, self.rollout_workers)
        source = export_weights(mode, self.actor, self.sync_dir)
        self.weights_synced = True  # from now on a re-created rollout worker loads these weights too
        slots = [[i] for i in range(len(self.rollout_pool))]
        self.rollout_pool.run(slots, lambda w, _i, _slot: load_weights_remote(w, mode, source))
        self.rollout_version = self.actor_version
        return time.time() - t0

    def publish_policy(self) -> float:
        """The actor was updated: sync now, or (async) before the next batch is submitted."""
        self.actor_version += 1
        return 0.0 if self.prefetch is not None else self.sync_weights()

    def ensure_synced(self) -> float:
        """Sync the actor's weights to the rollout engines if they hold an older policy (seconds taken)."""
        return self.sync_weights() if self.actor_version > self.rollout_version else 0.0

    # ---- rollouts of an iteration --------------------------------------------------------------
    def rollout_batch(self, it: int) -> Rollout:
        """This iteration's scored rollouts: generated now by the current policy, or (async) the batch
        that generated during the previous iteration's training (``steprl.prefetch``)."""
        if self.prefetch is not None:
            return self.prefetch.take(it)
        return self._rollout(self.draw_tasks(), it, self.timer)

    def _rollout(self, tasks: list[Task], it: int, timer: StageTimer) -> Rollout:
        c = self.cfg.rollout
        trajs, stats = self.generate(tasks, c.group_size, c.temperature, self.rollout_seed(it), timer=timer)
        return Rollout(
            trajs, stats["rollout/generated_tokens"], stats["rollout/seconds"], dict(self.reward_metrics)
        )

    def draw_tasks(self) -> list[Task]:
        """The next batch's tasks: first those in flight when the resumed checkpoint was written."""
        tasks, self.resume_tasks = (self.resume_tasks or self.next_tasks()), []
        return tasks

    def rollout_seed(self, it: int) -> int:
        """The sampling seed of iteration ``it``'s training rollouts (a pure function: exact resume)."""
        return self.cfg.trainer.seed * 100003 + it * 977

    def next_tasks(self) -> list[Task]:
        k = self.cfg.trainer.tasks_per_iteration
        if self.cursor + k > len(self.train_tasks):
            self.rng.shuffle(self.train_tasks)
            self.cursor = 0
        tasks = self.train_tasks[self.cursor : self.cursor + k]
        self.cursor += k
        return tasks

    def wait_rollouts(self) -> None:
        """Let an in-flight batch finish (kept for the next iteration) and sync the newest policy:
        evaluation and the end of training need the engines idle and current."""
        if self.prefetch is not None:
            self.prefetch.wait()
        self.ensure_synced()

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

    # ---- workers a method changes --------------------------------------------------------------
    def add_group(self, name: str, group: WorkerGroup) -> None:
        self.extra_groups[name] = group

    def _reward_factory(self, reward_cfg: Any) -> Callable[[int], Any]:
        reward_cls = ray.remote(num_cpus=0)(RewardWorker)
        return lambda slot: reward_cls.options(**self.placement.options("reward", slot)).remote(
            reward_cfg, reward_env(reward_cfg)
        )

    def set_reward_config(self, reward_cfg: Any) -> None:
        """Replace the reward workers with ones built from ``reward_cfg`` (a method that trains a reward
        model mid-run, e.g. CodeTool's PRM, switches a component to it), in their placement bundles; a
        later restart keeps the new configuration. No config object is mutated."""
        self.reward_pool.reconfigure(self._reward_factory(reward_cfg))

    # ---- reports -------------------------------------------------------------------------------
    def worker_handles(self) -> dict[str, list[Any]]:
        groups = {"actor": self.actor, "ref": self.ref, "critic": self.critic, **self.extra_groups}
        handles = {k: g.workers for k, g in groups.items() if g is not None}
        handles.update(rollout=self.rollout_workers, reward=self.reward_workers)
        return handles

    def peak_memory(self) -> dict[str, float]:
        handles = {k: v for k, v in self.worker_handles().items() if k not in self.extra_groups}
        return reports.peak_memory(handles)

    def fault_metrics(self) -> dict[str, float]:
        return reports.fault_metrics(self.rollout_pool, self.reward_pool, self.tool_server)

    def placement_report(self) -> dict[str, Any]:
        """Nodes of the driver and every worker, and the weight-sync path that placement takes."""
        report = reports.placement_report(self.cfg.ray.placement, self.worker_handles())
        report["weight_sync"] = choose_mode(self.cfg.rollout.weight_sync, self.actor, self.rollout_workers)
        return report

    def shutdown(self) -> None:
        if self.prefetch is not None:
            self.prefetch.shutdown()
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
