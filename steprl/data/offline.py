"""Offline step-grained PPO data: the published StepTool PPO CSV as token-level trajectories.

The StepTool repository trains on fixed, pre-scored trajectories. ``data.format=steptool_csv``
reproduces that mode: every row becomes a ``Trajectory`` (chat-template token deltas of the model
being trained, the file's step rewards on each assistant turn), and each iteration trains on the next
``trainer.tasks_per_iteration`` of them. The order is a pure function of (seed, iteration), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from steprl.data.formats import OnError, read_steptool_ppo_csv
from steprl.data.steptool_tokenize import ChatTemplateError, tokenize_offline_trajectory
from steprl.protocol import Trajectory

logger = logging.getLogger(__name__)


@dataclass
class OfflineStepDataset:
    trajectories: list[Trajectory]
    seed: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_steptool_csv(
        cls, path: str, tokenizer: Any, *, max_len: int, on_error: OnError = "skip", seed: int = 0
    ) -> OfflineStepDataset:
        """Read and tokenize the file; rows that do not parse, do not tokenize or exceed ``max_len``
        tokens are counted in ``stats`` and skipped (or raise with ``on_error="raise"``)."""
        rows = read_steptool_ppo_csv(path, "auto", on_error)
        stats = {
            "rows_read": len(rows),
            "rows_malformed": rows.stats.skipped,
            "too_long": 0,
            "untokenizable": 0,
        }
        trajs: list[Trajectory] = []
        for row in rows:
            try:
                traj = tokenize_offline_trajectory(row, tokenizer)
            except (ChatTemplateError, ValueError) as e:
                if on_error == "raise":
                    raise ValueError(f"{path}:{row.source_line}: {e}") from e
                logger.warning("%s:%d: skipped (%s)", path, row.source_line, e)
                stats["untokenizable"] += 1
                continue
            if len(traj.prompt_ids) + len(traj.response_ids) > max_len:
                if on_error == "raise":
                    raise ValueError(f"{path}:{row.source_line}: longer than {max_len} tokens")
                stats["too_long"] += 1
                continue
            trajs.append(traj)
        if not trajs:
            raise ValueError(f"{path}: no usable trajectory ({stats})")
        stats["trajectories"] = len(trajs)
        return cls(trajs, seed, stats)

    def batch(self, iteration: int, size: int) -> list[Trajectory]:
        """The trajectories of 1-based ``iteration``: epochs of a seeded permutation, wrapped around."""
        n = len(self.trajectories)
        orders: dict[int, list[int]] = {}
        out = []
        for k in range((iteration - 1) * size, iteration * size):
            epoch, pos = divmod(k, n)
            if epoch not in orders:
                orders[epoch] = list(range(n))
                random.Random(f"{self.seed}-{epoch}").shuffle(orders[epoch])
            out.append(copy.deepcopy(self.trajectories[orders[epoch][pos]]))
        return out
