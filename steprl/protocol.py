"""The trajectory protocol: what one episode is, and how a batch of episodes becomes tensors.

A step is data, not a guess: every token carries the index of the step it belongs to, and the
masks for action / observation / padding are separate. Step boundaries are never inferred from
where rewards are non-zero.

Token layout of one episode (``prompt_ids`` then ``response_ids``)::

    prompt | action step 0 | obs 0 | action step 1 | obs 1 | ... | action step n-1 (final answer)

* ``action`` tokens were sampled by the policy (they get loss and advantages);
* ``obs`` tokens were appended by the environment (tool results and the chat-template tokens
  around them); they are conditioning only and masked out of every loss;
* a step ``k`` is one assistant turn: a tool call, or the final answer.

In a conversation an assistant turn may also be a *reply* (``is_reply``): it answered a user turn and
the user's next message follows as an observation (masked like a tool result, no reward of its own);
only the reply to the last user turn is the final answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

END_REASONS = ("answer", "max_turns", "max_tokens", "no_action", "env_done", "error")


@dataclass
class StepRecord:
    """One assistant turn and what the environment said about it."""

    text: str  # the assistant's decoded turn
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "arguments"}]
    observation: str = ""  # what the environment answered (empty for a final answer)
    is_final: bool = False  # the turn gave the final answer
    parse_error: str | None = None  # why the call did not parse, if it did not
    succ_calling: float = 0.0  # 1 if every call parsed, named a real tool, validated and ran
    contribution: float = 0.0  # in [0, 1]; filled by the reward worker
    reward: float = 0.0  # shaped step reward; filled by the reward worker
    info: dict[str, Any] = field(default_factory=dict)  # environment's per-step facts for rules
    turn: int = 0  # the user turn the step belongs to (0 = the question; conversations go on)
    is_reply: bool = False  # the turn answered a user turn and the user spoke again (not final)


@dataclass
class Trajectory:
    """One episode, token in / token out."""

    task_id: str
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)  # 1 = sampled by the policy
    obs_mask: list[int] = field(default_factory=list)  # 1 = appended by the environment
    step_index: list[int] = field(default_factory=list)  # step of each response token
    rollout_logprobs: list[float] = field(default_factory=list)  # 0.0 on obs tokens
    steps: list[StepRecord] = field(default_factory=list)
    done: bool = False  # terminated: the episode reached a terminal state
    truncated: bool = False  # cut by a budget: bootstrap from the last state's value
    end_reason: str = "error"
    is_solved: float = 0.0  # 1 solved, 0.5 unsure, 0 unsolved (filled by the reward worker)
    final_answer: str | None = None
    group_id: str = ""  # same prompt -> same group (GRPO/RLOO)
    meta: dict[str, Any] = field(default_factory=dict)

    def append(
        self, ids: list[int], *, is_action: bool, step: int, logprobs: list[float] | None = None
    ) -> None:
        """Append a span of tokens; action spans carry their sampling log-probs."""
        n = len(ids)
        self.response_ids.extend(ids)
        self.action_mask.extend([1 if is_action else 0] * n)
        self.obs_mask.extend([0 if is_action else 1] * n)
        self.step_index.extend([step] * n)
        if logprobs is None:
            logprobs = [0.0] * n
        if len(logprobs) != n:
            raise ValueError(f"{len(logprobs)} log-probs for {n} tokens")
        self.rollout_logprobs.extend(logprobs)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def step_rewards(self) -> list[float]:
        return [s.reward for s in self.steps]

    def validate(self) -> None:
        """Check the invariants; raise ValueError naming the first broken one."""
        n = len(self.response_ids)
        for name in ("action_mask", "obs_mask", "step_index", "rollout_logprobs"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{self.task_id}: {name} has {len(getattr(self, name))} entries for {n} tokens"
                )
        for a, o in zip(self.action_mask, self.obs_mask, strict=True):
            if a + o != 1:
                raise ValueError(f"{self.task_id}: a response token must be exactly one of action/obs")
        for k in range(self.num_steps):
            if not any(a and s == k for a, s in zip(self.action_mask, self.step_index, strict=True)):
                raise ValueError(f"{self.task_id}: step {k} has no action token")
        if self.done and self.truncated:
            raise ValueError(f"{self.task_id}: an episode cannot be both done and truncated")
        if self.end_reason not in END_REASONS:
            raise ValueError(f"{self.task_id}: unknown end_reason {self.end_reason!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        d["steps"] = [StepRecord(**s) for s in d.get("steps", [])]
        return cls(**d)


@dataclass
class Batch:
    """Right-padded tensors for a list of trajectories. All [B, T] tensors cover prompt + response.

    ``step_index`` is -1 outside action tokens (prompt, observations, padding); on action tokens it
    is the step k in 0..num_steps-1. ``step_rewards``/``step_mask`` are [B, S] with S = max steps.
    ``last_index`` [B] is the position of the last real token (the bootstrap state of a truncated
    episode). Log-prob tensors are aligned with tokens: ``x[b, t] = log p(input_ids[b, t] | < t)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    obs_mask: torch.Tensor
    step_index: torch.Tensor
    rollout_logprobs: torch.Tensor
    step_rewards: torch.Tensor
    step_mask: torch.Tensor
    done: torch.Tensor
    truncated: torch.Tensor
    last_index: torch.Tensor
    prompt_lengths: torch.Tensor
    is_solved: torch.Tensor
    group_ids: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def collate(trajectories: list[Trajectory], pad_id: int) -> Batch:
    """Pack trajectories into a right-padded Batch (no re-tokenization: ids are used as they are)."""
    if not trajectories:
        raise ValueError("cannot collate an empty list of trajectories")
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
    B, T = len(trajectories), max(lengths)
    S = max(1, max(t.num_steps for t in trajectories))
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.bool)
    action_mask = torch.zeros(B, T, dtype=torch.bool)
    obs_mask = torch.zeros(B, T, dtype=torch.bool)
    step_index = torch.full((B, T), -1, dtype=torch.long)
    rollout_logprobs = torch.zeros(B, T)
    step_rewards = torch.zeros(B, S)
    step_mask = torch.zeros(B, S, dtype=torch.bool)
    for b, t in enumerate(trajectories):
        p, n = len(t.prompt_ids), len(t.response_ids)
        input_ids[b, :p] = torch.tensor(t.prompt_ids, dtype=torch.long)
        attention_mask[b, : p + n] = True
        if n:
            input_ids[b, p : p + n] = torch.tensor(t.response_ids, dtype=torch.long)
            act = torch.tensor(t.action_mask, dtype=torch.bool)
            action_mask[b, p : p + n] = act
            obs_mask[b, p : p + n] = torch.tensor(t.obs_mask, dtype=torch.bool)
            idx = torch.tensor(t.step_index, dtype=torch.long)
            step_index[b, p : p + n] = torch.where(act, idx, torch.full_like(idx, -1))
            rollout_logprobs[b, p : p + n] = torch.tensor(t.rollout_logprobs, dtype=torch.float32)
        k = t.num_steps
        step_rewards[b, :k] = torch.tensor(t.step_rewards, dtype=torch.float32) if k else 0.0
        step_mask[b, :k] = True
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        action_mask=action_mask,
        obs_mask=obs_mask,
        step_index=step_index,
        rollout_logprobs=rollout_logprobs,
        step_rewards=step_rewards,
        step_mask=step_mask,
        done=torch.tensor([t.done for t in trajectories], dtype=torch.bool),
        truncated=torch.tensor([t.truncated for t in trajectories], dtype=torch.bool),
        last_index=torch.tensor([n - 1 for n in lengths], dtype=torch.long),
        prompt_lengths=torch.tensor([len(t.prompt_ids) for t in trajectories], dtype=torch.long),
        is_solved=torch.tensor([t.is_solved for t in trajectories], dtype=torch.float32),
        group_ids=[t.group_id for t in trajectories],
    )
