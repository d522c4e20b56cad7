"""What a run reports about its workers: peak memory, restarts, and where every worker was placed.

Pure reads over worker handles; a worker that died since its last call is skipped (the fault path
replaces it on its next call), so a report never stops a run.
"""

from __future__ import annotations

from typing import Any

import ray

from steprl.fault import ACTOR_GONE, LocalToolServer, WorkerPool
from workers.group import node_ids


def peak_memory(handles: dict[str, list[Any]]) -> dict[str, float]:
    """``memory/<kind>_peak_mb`` (and ``_cuda_peak_mb``): the largest peak over each kind's processes."""
    refs = [(kind, w.peak_memory_mb.remote()) for kind, ws in handles.items() for w in ws]
    out: dict[str, float] = {}
    for kind, ref in refs:
        try:
            peaks = ray.get(ref)
        except ACTOR_GONE:
            continue
        for name, mb in peaks.items():
            key = f"memory/{kind}_{name}"
            out[key] = max(out.get(key, 0.0), mb)
    return out


def fault_metrics(
    rollout: WorkerPool | None, reward: WorkerPool | None, tool_server: Any | None
) -> dict[str, float]:
    """Restarts so far (cumulative over the run) of rollout / reward workers and the local tool server."""
    out = {
        "fault/rollout_restarts": float(sum(rollout.restarts)) if rollout else 0.0,
        "fault/reward_restarts": float(sum(reward.restarts)) if reward else 0.0,
    }
    if isinstance(tool_server, LocalToolServer):
        out["fault/tool_server_restarts"] = float(tool_server.epoch)
    return out


def placement_report(strategy: str, handles: dict[str, list[Any]]) -> dict[str, Any]:
    """The Ray node id of the driver and of every worker, by role (recorded in summary.json)."""
    nodes = {k: node_ids(hs) for k, hs in handles.items()}
    return {
        "strategy": strategy,
        "driver": ray.get_runtime_context().get_node_id(),
        "workers": nodes,
        "num_nodes": len({n for ns in nodes.values() for n in ns}),
    }
