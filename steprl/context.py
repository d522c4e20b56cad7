"""What a method may use of the running trainer: a small documented context, not the Controller class.

``steprl.controller.Controller`` implements it; the stages in ``steprl.step`` and every method in
``steprl.methods`` see only this. Worker calls that reach rollout or reward workers (``generate``,
``score``, ``fan_out``, ``sync_weights``, ``set_reward_config``) all go through the fault path
(``steprl.fault``: restart, retry, merge by id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from steprl.algorithms.advantages import AdvantageConfig
    from steprl.algorithms.rewards import RunningRewardNormalizer
    from steprl.config import StepRLConfig
    from steprl.logger import MetricsLogger
    from steprl.progress import Progress, StageTimer
    from steprl.protocol import Trajectory
    from steprl.step import Rollout
    from tools_env.suite import Suite, Task
    from workers.group import WorkerGroup


class MethodContext(Protocol):
    # ---- read-only facts of the run
    cfg: StepRLConfig  # typed, never mutated
    run_dir: Path
    suite: Suite
    test_tasks: list[Task]
    tokenizer: Any
    pad_id: int
    policy_path: str  # what the rollout / reference / critic workers started from (after SFT)
    sft_data: list[Trajectory]  # the SFT set (cold start or built by the method), else empty
    logger: MetricsLogger
    progress: Progress
    timer: StageTimer  # ``with ctx.timer("name"):`` adds ``time/name`` to this iteration's metrics

    # ---- the training state the shared stages use
    actor: WorkerGroup
    ref: WorkerGroup | None
    critic: WorkerGroup | None
    kl_ctl: Any  # FixedKLController | AdaptiveKLController (``.value``, ``.update``)
    adv_cfg: AdvantageConfig
    reward_normalizer: RunningRewardNormalizer | None
    use_is: bool  # truncated IS weights on the policy loss (async or rollout_is=on)

    # ---- data
    def next_tasks(self) -> list[Task]: ...
    def rollout_seed(self, it: int) -> int: ...

    # ---- rollout and reward workers (fault-handled)
    def rollout_batch(self, it: int) -> Rollout:
        """This iteration's scored rollouts of ``trainer.tasks_per_iteration`` tasks (async-aware)."""
        ...

    def generate(
        self, tasks: list[Task], group_size: int, temperature: float, seed: int
    ) -> tuple[list[Trajectory], dict[str, float]]: ...

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[Trajectory]: ...

    def fan_out(
        self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, seed: int
    ) -> tuple[list[list[int]], list[Any]]:
        """Run ``fn(worker, [items...], *args, seed_i)`` inside the rollout workers over round-robin
        chunks of ``items``; returns the chunks (item indices) and each chunk's result exactly once."""
        ...

    def set_reward_config(self, reward_cfg: Any) -> None: ...

    # ---- policy and workers
    def publish_policy(self) -> float:
        """The actor changed: sync the rollout engines (seconds; 0 when the next collect syncs)."""
        ...

    def add_group(self, name: str, group: WorkerGroup) -> None:
        """A worker group the method starts (checkpointed under ``name``, shut down with the rest)."""
        ...

    # ---- reports the finish stage logs
    def peak_memory(self) -> dict[str, float]: ...
    def fault_metrics(self) -> dict[str, float]: ...
