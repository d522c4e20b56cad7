"""Asynchronous rollouts (``trainer.async_rollout``): batch k+1 generates in a driver thread while batch k
trains (one policy update behind; ``steprl.algorithms.off_policy`` corrects for it).

The engines are idle only between batches, so that is when the newest policy is synced to them: before
the next batch is submitted. The tasks of the batch in flight are part of the checkpoint (a resumed run
trains on them first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steprl.step import Rollout
    from tools_env.suite import Task


class Prefetcher:
    """``produce(tasks, it)`` makes a scored :class:`~steprl.step.Rollout` (run in the thread);
    ``draw()`` gives the next batch's tasks; ``sync()`` syncs the engines if they hold an older policy
    (seconds); ``version()`` counts actor updates so far (staleness = updates since submission)."""

    def __init__(
        self,
        produce: Callable[[list[Task], int], Rollout],
        draw: Callable[[], list[Task]],
        sync: Callable[[], float],
        version: Callable[[], int],
        last_iteration: int,
    ) -> None:
        self.produce, self.draw, self.sync, self.version = produce, draw, sync, version
        self.last_iteration = last_iteration
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steprl-rollout")
        self.pending: Future | None = None  # (Rollout, policy version at submission)
        self.tasks: list[Task] = []  # of the pending batch

    def take(self, it: int) -> Rollout:
        """Iteration ``it``'s batch (generated meanwhile; now, if none is in flight); submits ``it + 1``."""
        if self.pending is None:  # the first iteration (or the first after a resume)
            self._submit(it)
        t0 = time.time()
        rollout, version = self.pending.result()
        wait = time.time() - t0
        self.pending = None
        sync = self.sync()  # the engines are idle: give them the newest policy
        if it < self.last_iteration:
            self._submit(it + 1)
        rollout.metrics.update(
            {"async/rollout_wait_seconds": wait, "async/staleness": float(self.version() - version)}
        )
        rollout.sync_seconds = sync
        return rollout

    def _submit(self, it: int) -> None:
        tasks = self.tasks = self.draw()
        version = self.version()

        def work() -> tuple[Rollout, int]:
            t0 = time.time()
            rollout = self.produce(tasks, it)
            rollout.metrics["async/background_seconds"] = time.time() - t0
            return rollout, version

        self.pending = self.pool.submit(work)

    def in_flight(self) -> list[Task]:
        """The tasks drawn for the batch generating now (not trained on yet): checkpointed."""
        return list(self.tasks) if self.pending is not None else []

    def wait(self) -> None:
        """Let the batch in flight finish (it is kept for the next iteration)."""
        if self.pending is not None:
            self.pending.result()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)  # a batch in flight (failed run) is abandoned
