"""The actor with preference and ranking updates: DPO on pairs (ETO) and RRHF ranking (TRICE).

Candidates come in groups (a DPO pair is a group of 2: chosen, rejected; TRICE ranks k candidates
per question). A group must stay whole on one rank and in one mini-batch, so the tensors are laid
out one group per row, candidates last (see :func:`pack_groups`); the shared FSDP mini-batch loop
(``FSDPWorker._train_epochs``) then splits rows = groups, and the loss is a mean over groups.
"""

from __future__ import annotations

import torch

from steprl.algorithms.preference import dpo_loss, require_nonempty, sequence_logprobs, trice_loss
from steprl.modeling import TensorDict, token_logprobs
from workers.fsdp import ActorWorker

Candidate = tuple[list[int], list[int]]  # (token ids, 1 on the response's action tokens)


def pack_groups(groups: list[list[Candidate]], pad_id: int) -> TensorDict:
    """Right-padded group tensors: ``cand_*`` [G, T, k] (candidates on the last axis, so the shared
    padding trim, which cuts axis 1, applies), ``attention_mask`` [G, T] = the union over a group's
    candidates (it sets the trimmed width), ``group_mask`` [G] (real groups)."""
    if not groups:
        raise ValueError("no candidate groups to pack")
    k = len(groups[0])
    if any(len(g) != k for g in groups):
        raise ValueError(
            f"every group needs the same number of candidates, got {sorted({len(g) for g in groups})}"
        )
    T = max(len(ids) for g in groups for ids, _ in g)
    G = len(groups)
    ids_t = torch.full((G, T, k), pad_id, dtype=torch.long)
    attn = torch.zeros(G, T, k, dtype=torch.bool)
    act = torch.zeros(G, T, k, dtype=torch.bool)
    for gi, group in enumerate(groups):
        for ci, (ids, mask) in enumerate(group):
            if len(ids) != len(mask):
                raise ValueError(f"group {gi} candidate {ci}: {len(mask)} mask entries for {len(ids)} tokens")
            n = len(ids)
            ids_t[gi, :n, ci] = torch.tensor(ids, dtype=torch.long)
            attn[gi, :n, ci] = True
            act[gi, :n, ci] = torch.tensor(mask, dtype=torch.bool)
    return {
        "attention_mask": attn.any(-1),
        "cand_input_ids": ids_t,
        "cand_attention_mask": attn,
        "cand_action_mask": act,
        "group_mask": torch.ones(G, dtype=torch.bool),
    }


def flatten_candidates(data: TensorDict) -> TensorDict:
    """[G, T, k] candidate tensors as [G*k, T] rows (group-major), for per-row workers (reference)."""
    G, T, k = data["cand_input_ids"].shape
    return {
        "input_ids": data["cand_input_ids"].permute(0, 2, 1).reshape(G * k, T),
        "attention_mask": data["cand_attention_mask"].permute(0, 2, 1).reshape(G * k, T),
        "action_mask": data["cand_action_mask"].permute(0, 2, 1).reshape(G * k, T),
    }


class PreferenceActorWorker(ActorWorker):
    """ActorWorker plus ``dpo_step`` and ``rank_step`` (both through ``_train_epochs``)."""

    def _candidate_logprobs(self, mb: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and action masks of every candidate, [g, k, T]."""
        flat = flatten_candidates(mb)
        g, _, k = mb["cand_input_ids"].shape
        ids = flat["input_ids"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=flat["attention_mask"].to(self.device).long())
        lp = token_logprobs(out.logits, ids)  # as wide as ids, also for a one-column shard of padding
        T = ids.shape[1]
        return lp.view(g, k, T), flat["action_mask"].to(self.device).view(g, k, T)

    def dpo_step(self, data: TensorDict, beta: float, lr: float) -> dict[str, float]:
        """DPO on pairs (candidate 0 chosen, 1 rejected); ``data["ref_logps"]`` [P, 2] are the reference
        policy's summed response log-probs. Raises if a real pair has an empty side."""
        self.set_lr(lr)

        def loss_fn(mb: TensorDict, mask: torch.Tensor):
            lp, act = self._candidate_logprobs(mb)
            require_nonempty(act.sum(-1), mask, "DPO pair response")
            seq = sequence_logprobs(lp, act)
            ref = mb["ref_logps"].to(self.device)
            return dpo_loss(seq[:, 0], seq[:, 1], ref[:, 0], ref[:, 1], beta, weight=mask)

        return self._train_epochs(data, "group_mask", loss_fn)

    def rank_step(
        self, data: TensorDict, alpha: float, lr: float, length_penalty: float = 1.0
    ) -> dict[str, float]:
        """TRICE stage 2: RRHF ranking by ``data["scores"]`` [G, k] plus SFT on each group's best."""
        self.set_lr(lr)

        def loss_fn(mb: TensorDict, mask: torch.Tensor):
            lp, act = self._candidate_logprobs(mb)
            return trice_loss(lp, act, mb["scores"].to(self.device), mask, alpha, length_penalty)

        return self._train_epochs(data, "group_mask", loss_fn)
