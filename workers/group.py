"""A group of FSDP ranks as Ray actors, called like one object (data-parallel dispatch)."""

from __future__ import annotations

import contextlib
from typing import Any

import ray
import torch

from steprl.modeling import TensorDict, shard_rows


class WorkerGroup:
    """``world_size`` Ray actors of one FSDP worker class sharing a process group."""

    def __init__(
        self, worker_cls: type, world_size: int, num_cpus: float, num_gpus: float, name: str, **kwargs: Any
    ) -> None:
        remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(worker_cls)
        self.name = name
        self.workers = [
            remote_cls.options(name=None, max_concurrency=1).remote(rank=r, world_size=world_size, **kwargs)
            for r in range(world_size)
        ]
        master = ray.get(self.workers[0].node_ip.remote())
        port = ray.get(self.workers[0].free_port.remote())
        self.info = ray.get([w.setup.remote(master, port) for w in self.workers])

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def scatter(self, method: str, data: TensorDict, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every rank with its shard of ``data``; return the per-rank results."""
        shards = shard_rows(data, self.world_size)
        return ray.get(
            [getattr(w, method).remote(s, **kwargs) for w, s in zip(self.workers, shards, strict=True)]
        )

    def gather_rows(self, method: str, data: TensorDict) -> torch.Tensor:
        """A per-row tensor result (log-probs, values) back in the original row order."""
        rows = data["input_ids"].shape[0]
        parts = self.scatter(method, data)
        return torch.cat(parts, dim=0)[:rows]

    def mean_metrics(self, method: str, data: TensorDict, **kwargs: Any) -> dict[str, float]:
        results = self.scatter(method, data, **kwargs)
        return {k: sum(r[k] for r in results) / len(results) for k in results[0]}

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return ray.get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # a dead worker cannot be shut down politely
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        for w in self.workers:
            ray.kill(w)
