"""ArCHer's utterance-level critic: the policy's transformer with Q1, Q2 and V heads, and target copies.

One forward pass over a trajectory gives every step's values at once, because the backbone is causal:
the hidden state at a step's last action token has seen exactly (state, action) and gives Q1/Q2 there;
the hidden state at the last token before the step gives V. The target network is a second, identically
built and identically sharded copy, updated by Polyak averaging after every critic step. The formulas
(TD targets, double-Q minimum, soft update) are in ``steprl.algorithms.archer``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from steprl.algorithms.archer import gather_steps, soft_update_
from steprl.modeling import TensorDict
from workers.fsdp import FSDPWorker

HEADS = ("q1", "q2", "v")


class UtteranceCritic(nn.Module):
    """A transformer backbone (no LM head) and three MLP heads: [B, T, 3] = (Q1, Q2, V) at every token."""

    def __init__(self, backbone: nn.Module, seed: int) -> None:
        super().__init__()
        self.backbone = backbone
        h = backbone.config.hidden_size
        gen = torch.Generator().manual_seed(seed)  # the same heads on every rank and in the target copy
        for name in HEADS:
            head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
            with torch.no_grad():
                head[0].weight.copy_(torch.randn(h, h, generator=gen) / h**0.5)
                head[0].bias.zero_()
                head[2].weight.zero_()  # Q = V = 0 before any TD step: no advantage from an untrained critic
                head[2].bias.zero_()
            setattr(self, name, head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.cat([getattr(self, n)(hidden) for n in HEADS], dim=-1).float()


class ArcherCriticWorker(FSDPWorker):
    """One FSDP rank of the ArCHer critic (online + target network)."""

    role = "archer_critic"

    def __init__(self, *args: Any, tau: float = 0.1, critic_path: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tau, self.critic_path = tau, critic_path

    def _build_model(self) -> nn.Module:
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(self.model_path, dtype=getattr(torch, self.model_cfg.dtype))
        model = UtteranceCritic(backbone, self.seed)
        if self.critic_path:  # a saved ArCHer critic (save_hf of this worker)
            import glob

            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = {}
            for f in sorted(glob.glob(f"{self.critic_path}/*.safetensors")):
                state.update(load_file(f))
            if not state:
                raise FileNotFoundError(f"archer.critic_path {self.critic_path} holds no safetensors file")
            model.load_state_dict(state, strict=True)
        return model

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        info = super().setup(master_addr, master_port)
        self.target = self._build_model()  # built the same way: equal to the online network at start
        self.target.requires_grad_(False)
        self._shard(self.target)
        return info

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            params, lr=self.optim_cfg.critic_lr, weight_decay=self.optim_cfg.weight_decay
        )

    def _heads(self, model: nn.Module, data: TensorDict) -> torch.Tensor:
        return model(data["input_ids"].to(self.device), data["attention_mask"].to(self.device).long())

    @torch.no_grad()
    def compute_heads(self, data: TensorDict, target: bool = False) -> torch.Tensor:
        """[B, T, 3] (Q1, Q2, V) at every token, from the online or the target network."""
        model = self.target if target else self.model
        model.eval()
        return self._heads(model, data).cpu()

    def compute_target_heads(self, data: TensorDict) -> torch.Tensor:
        return self.compute_heads(data, target=True)

    def update_critic(self, data: TensorDict) -> dict[str, float]:
        """One TD step on (Q1, Q2) -> ``q_target`` at action positions and V -> ``v_target`` at states,
        then the Polyak update of the target network."""
        self.model.train()
        mask = data["step_mask"].to(self.device)
        heads = self._heads(self.model, data)
        q1 = gather_steps(heads[..., 0], data["action_pos"].to(self.device))
        q2 = gather_steps(heads[..., 1], data["action_pos"].to(self.device))
        v = gather_steps(heads[..., 2], data["state_pos"].to(self.device))
        yq, yv = data["q_target"].to(self.device), data["v_target"].to(self.device)
        m = mask.float()
        count = self._global_count(mask)
        zero = torch.zeros_like(yq)  # where(), not a product: a padding row may hold NaNs
        q_err = torch.where(mask, (q1 - yq) ** 2 + (q2 - yq) ** 2, zero)
        v_err = torch.where(mask, (v - yv) ** 2, zero)
        loss = (q_err.sum() + v_err.sum()) / max(count, 1.0) * self.world_size
        grad_norm = self._step(loss)
        for net in (self.model, self.target):  # FSDP2 keeps the root's parameters unsharded after a
            net.reshard()  # forward without backward: both must expose their shards to be averaged
        soft_update_(_local(self.target.parameters()), _local(self.model.parameters()), self.tau)
        local = max(float(m.sum()), 1.0)
        return {
            "archer/q_loss": float(q_err.sum()) / local,
            "archer/v_loss": float(v_err.sum()) / local,
            "archer/q_mean": float(torch.where(mask, torch.minimum(q1, q2), zero).sum()) / local,
            "archer/v_mean": float(torch.where(mask, v, zero).sum()) / local,
            "archer/critic_grad_norm": grad_norm,
        }


def _local(params: Any) -> list[torch.Tensor]:
    """This rank's shards (FSDP2 parameters are DTensors; both networks are sharded the same way)."""
    return [p.to_local() if hasattr(p, "to_local") else p for p in params]
