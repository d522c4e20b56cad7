"""A group of FSDP ranks as Ray actors, called like one object (data-parallel dispatch), and the
placement of all of a run's workers on the cluster's nodes."""

from __future__ import annotations

import contextlib
from typing import Any

import ray
import torch

from steprl.modeling import TensorDict, balanced_order, shard_rows

PLACEMENTS = ("none", "colocate", "spread")


class Placement:
    """Where a run's workers go (``ray.placement``).

    ``none``: Ray's default scheduling (any node with free resources). ``colocate``: one placement
    group holding a bundle per worker, strategy PACK (as few nodes as possible: FSDP ranks, the
    reference and rollout share a node's memory bandwidth and /dev/shm for weight sync).
    ``spread``: the same bundles, strategy SPREAD (across nodes, best effort: more nodes' CPUs/GPUs
    and memory). All bundles are reserved up front, so a run either gets everything or fails at
    start with the resources it asked for.

    ``bundles`` maps a role to one resource dict per worker; a worker that needs no resources
    (the reward workers' ``num_cpus=0``) shares, round robin, the bundles of the role named in
    ``share`` (reward -> rollout: scoring runs next to the episodes), or of every role.
    """

    def __init__(
        self,
        strategy: str,
        bundles: dict[str, list[dict[str, float]]],
        share: dict[str, str] | None = None,
        timeout_s: float = 300.0,
    ):
        if strategy not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {strategy!r}")
        self.strategy, self.pg = strategy, None
        self.index: dict[tuple[str, int], int] = {}
        if strategy == "none":
            return
        from ray.util.placement_group import placement_group

        flat: list[dict[str, float]] = []
        empty: list[tuple[str, int]] = []
        for role, resources in bundles.items():
            for i, res in enumerate(resources):
                res = {k: float(v) for k, v in res.items() if v > 0}
                if res:
                    self.index[(role, i)] = len(flat)
                    flat.append(res)
                else:
                    empty.append((role, i))
        if not flat:
            raise ValueError("placement: no worker asks for any resource")
        for role, i in empty:
            host = (share or {}).get(role)
            hosts = [idx for (r, _), idx in self.index.items() if r == host] or list(range(len(flat)))
            self.index[(role, i)] = hosts[i % len(hosts)]
        self.pg = placement_group(flat, strategy="PACK" if strategy == "colocate" else "SPREAD")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(
                f"placement {strategy}: could not reserve {len(flat)} bundles {flat} within {timeout_s:.0f}s; "
                f"the cluster has {ray.cluster_resources()}"
            )

    def options(self, role: str, index: int) -> dict[str, Any]:
        """``.options(**...)`` for worker ``index`` of ``role`` (empty: default scheduling)."""
        if self.pg is None or (role, index) not in self.index:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.pg,
            placement_group_bundle_index=self.index[(role, index)],
            placement_group_capture_child_tasks=False,
        )
        return {"scheduling_strategy": strategy}

    def remove(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self.pg)
            self.pg = None


def node_ids(handles: list[Any]) -> list[str]:
    """The Ray node id each actor runs on (asked of the actor itself)."""
    return ray.get(
        [h.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id()) for h in handles]
    )


class WorkerGroup:
    """``world_size`` Ray actors of one FSDP worker class sharing a process group."""

    def __init__(
        self,
        worker_cls: type,
        world_size: int,
        num_cpus: float,
        num_gpus: float,
        name: str,
        placement: Placement | None = None,
        balance_rows: bool = False,
        **kwargs: Any,
    ) -> None:
        self.balance_rows = balance_rows
        remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(worker_cls)
        self.name = name
        self.workers = [
            remote_cls.options(
                name=None, max_concurrency=1, **(placement.options(name, r) if placement else {})
            ).remote(rank=r, world_size=world_size, **kwargs)
            for r in range(world_size)
        ]
        master = ray.get(self.workers[0].node_ip.remote())
        port = ray.get(self.workers[0].free_port.remote())
        self.info = ray.get([w.setup.remote(master, port) for w in self.workers])

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def shards(self, data: TensorDict, row_groups: int = 1) -> tuple[list[TensorDict], list[int] | None]:
        """``data`` split into one shard per rank, and the slot order used (None: rows in position order).

        With ``balance_rows`` the rows are dealt so that every rank gets about as many tokens
        (:func:`~steprl.modeling.balanced_order`); ``row_groups`` is the number of mini-batches the
        worker splits its shard into, whose rows stay the same. Gradients and per-row results do not
        depend on which rank holds a row (losses divide by counts summed over ranks).
        """
        order = None
        tokens = data.get("cand_attention_mask", data.get("attention_mask"))
        if self.balance_rows and self.world_size > 1 and tokens is not None:
            lengths = tokens.reshape(tokens.shape[0], -1).sum(-1).tolist()
            order = balanced_order(lengths, self.world_size, row_groups)
        return shard_rows(data, self.world_size, order), order

    def scatter(self, method: str, data: TensorDict, row_groups: int = 1, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every rank with its shard of ``data`` (see :meth:`shards` for
        ``row_groups``); return the per-rank results."""
        return self._call(method, self.shards(data, row_groups)[0], **kwargs)

    def _call(self, method: str, shards: list[TensorDict], **kwargs: Any) -> list[Any]:
        return ray.get(
            [getattr(w, method).remote(s, **kwargs) for w, s in zip(self.workers, shards, strict=True)]
        )

    def gather_rows(self, method: str, data: TensorDict) -> torch.Tensor:
        """A per-row tensor result (log-probs, values) back in the original row order."""
        rows = data["input_ids"].shape[0]
        shards, order = self.shards(data)
        out = torch.cat(self._call(method, shards), dim=0)
        if order is not None:  # slot s holds row order[s]: row i is at slot argsort(order)[i]
            out = out[torch.argsort(torch.as_tensor(order))]
        return out[:rows]

    def mean_metrics(
        self, method: str, data: TensorDict, row_groups: int = 1, **kwargs: Any
    ) -> dict[str, float]:
        results = self.scatter(method, data, row_groups, **kwargs)
        return {k: sum(r[k] for r in results) / len(results) for k in results[0]}

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return ray.get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # a dead worker cannot be shut down politely
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        for w in self.workers:
            ray.kill(w)


def run_bundles(cfg: Any) -> dict[str, list[dict[str, float]]]:
    """One resource bundle per worker of a run (a ``StepRLConfig``), by role.

    The reference gets bundles when ``algorithm.kl_coef > 0``; a reference a method asks for
    otherwise, and groups a method starts itself, are scheduled by Ray outside the placement group.
    """

    def fsdp(w: Any) -> list[dict[str, float]]:
        return [{"CPU": w.num_cpus, "GPU": w.num_gpus} for _ in range(w.world_size)]

    out = {"actor": fsdp(cfg.actor)}
    if cfg.algorithm.kl_coef > 0:
        out["ref"] = fsdp(cfg.ref)
    if cfg.algorithm.use_critic:
        out["critic"] = fsdp(cfg.critic)
    out["rollout"] = [{"CPU": cfg.rollout.num_cpus} for _ in range(cfg.rollout.num_workers)]
    out["reward"] = [{"CPU": 0.0} for _ in range(cfg.reward.num_workers)]  # reward workers ask for no CPU
    return out
