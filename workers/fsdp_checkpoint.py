"""Exact-resume state of an FSDP2 worker group: every rank's model and optimizer shards and its RNG.

A mixin of :class:`workers.fsdp.FSDPWorker` (``self.model``, ``self.optimizer``, ``self.rank``,
``self.device``), kept apart so that the worker module holds the training passes only.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class ShardedCheckpoint:
    """``save_state`` / ``load_state`` through torch.distributed.checkpoint (no full gather)."""

    def save_state(self, directory: str) -> dict[str, Any]:
        """Everything an exact resume needs from this group, sharded, via torch.distributed.checkpoint.

        Every rank writes its own shards of the model and the optimizer state (no full gather, so
        this scales with the model) plus its RNG state. The directory must be on storage all ranks
        see (on several nodes: a shared file system). DCP can re-shard on load, so a run may resume
        with another ``world_size``.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        # an optimizer that never stepped has no state yet; saving it would make torch create it by
        # a zero step, which the resumed run would then count as a real one
        has_optim = self.optimizer is not None and bool(self.optimizer.state)
        if has_optim:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            state = {"model": model_sd, "optim": optim_sd}
        else:
            state = {"model": get_model_state_dict(self.model)}
        dcp.save(state, checkpoint_id=directory)
        rng = {"torch": torch.get_rng_state(), "has_optim": has_optim}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        torch.save(rng, os.path.join(directory, f"rng_rank{self.rank}.pt"))
        return {"rank": self.rank, "has_optim": has_optim}

    def load_state(self, directory: str) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote (model shards, optimizer state, RNG)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_state_dict,
            set_model_state_dict,
            set_state_dict,
        )

        rng_file = os.path.join(directory, f"rng_rank{self.rank}.pt")
        rng = torch.load(rng_file if os.path.exists(rng_file) else os.path.join(directory, "rng_rank0.pt"))
        if rng["has_optim"] and self.optimizer is not None:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=directory)
            set_state_dict(
                self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        else:
            state = {"model": get_model_state_dict(self.model)}
            dcp.load(state, checkpoint_id=directory)
            set_model_state_dict(self.model, state["model"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return {"rank": self.rank, "has_optim": rng["has_optim"]}
