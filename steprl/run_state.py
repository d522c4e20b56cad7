"""The controller's side of a checkpoint: what an exact resume needs besides the workers' own state.

Layout, atomic writing and format checks are ``steprl.checkpoint``'s; this module decides what goes in
(actor / critic / method groups, the data cursor and task order, RNG, KL coefficient, reward statistics,
whether the SFT cold start ran, the tasks of an asynchronous batch in flight) and how it comes back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from steprl.checkpoint import (
    FORMAT_VERSION,
    STATE_FILE,
    CheckpointError,
    python_rng_from_json,
    python_rng_to_json,
    read_state,
    write_checkpoint,
)

if TYPE_CHECKING:
    from steprl.controller import Controller


def save_checkpoint(ctl: Controller, tag: str, iteration: int = 0) -> Path:
    """Everything an exact resume needs, written atomically. The ``sft`` checkpoint also marks the SFT
    cold start as done."""
    if tag == "sft":
        ctl.sft_done = True

    def fill(tmp: Path) -> None:
        ctl.actor.call_all("save_hf", str(tmp / "actor"))
        ctl.tokenizer.save_pretrained(tmp / "actor")
        ctl.actor.call_all("save_state", str(tmp / "actor_state"))
        if ctl.critic is not None:
            ctl.critic.call_all("save_hf", str(tmp / "critic"))
            ctl.critic.call_all("save_state", str(tmp / "critic_state"))
        for name, group in ctl.extra_groups.items():
            group.call_all("save_hf", str(tmp / name))
        state = {"tag": tag, "iteration": iteration, **state_dict(ctl)}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        torch.save({"torch": torch.get_rng_state()}, tmp / "controller_rng.pt")

    return write_checkpoint(ctl.run_dir / "checkpoints" / tag, fill, {"tag": tag, "iteration": iteration})


def state_dict(ctl: Controller) -> dict[str, Any]:
    """The controller's own state: data cursor and task order, RNG, KL coefficient, reward stats."""
    return {
        "format": FORMAT_VERSION,
        "cursor": ctl.cursor,
        "task_order": [t.task_id for t in ctl.train_tasks],
        "python_rng": python_rng_to_json(ctl.rng.getstate()),
        "kl": ctl.kl_ctl.state_dict(),
        "reward_normalizer": ctl.reward_normalizer.state_dict() if ctl.reward_normalizer else None,
        "sft_done": ctl.sft_done,
        # asynchronous rollouts: the tasks of the batch in flight (drawn, not yet trained on)
        "pending_tasks": [t.task_id for t in ctl.prefetch.in_flight()] if ctl.prefetch else [],
    }


def load_state_dict(ctl: Controller, state: dict[str, Any]) -> None:
    by_id = {t.task_id: t for t in ctl.train_tasks}
    if sorted(by_id) != sorted(state["task_order"]):
        raise CheckpointError("checkpoint's training tasks differ from this config's (data.* changed?)")
    ctl.train_tasks = [by_id[i] for i in state["task_order"]]
    ctl.cursor = int(state["cursor"])
    ctl.rng.setstate(python_rng_from_json(state["python_rng"]))
    ctl.kl_ctl.load_state_dict(state["kl"])
    if ctl.reward_normalizer is not None and state.get("reward_normalizer"):
        ctl.reward_normalizer.load_state_dict(state["reward_normalizer"])
    ctl.sft_done = bool(state.get("sft_done", False))
    ctl.resume_tasks = [by_id[i] for i in state.get("pending_tasks", [])]


def restore(ctl: Controller, ckpt: Path) -> dict[str, Any]:
    """Continue from ``ckpt`` once the workers run: actor/critic model + optimizer + RNG states, the
    controller's state, and the rollout engines' weights. Returns the trainer state."""
    state = read_state(ckpt)
    ctl.actor.call_all("load_state", str(ckpt / "actor_state"))
    if ctl.critic is not None and (ckpt / "critic_state").is_dir():
        ctl.critic.call_all("load_state", str(ckpt / "critic_state"))
    load_state_dict(ctl, state)
    torch.set_rng_state(torch.load(ckpt / "controller_rng.pt")["torch"])
    if state["iteration"] > 0 and ctl.rollout_workers:  # engines started from the SFT policy
        ctl.sync_weights()
    return state
