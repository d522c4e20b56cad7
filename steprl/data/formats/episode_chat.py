"""An episode (``steprl.protocol.Trajectory``) as the chat it was, to write it in a StepTool format.

Why: the formats store chats, the episode loop stores tokens and steps. A step's assistant text is
``StepRecord.text``; what followed it is read from the step: the output of each executed call (one
tool message each, ``info["calls"]``), the parse-error message, or for a reply (``is_reply``) the
user's next message. A step whose observation never reached the tokens (a token-budget cut) adds none.
"""

from __future__ import annotations

from typing import Any

from steprl.protocol import StepRecord, Trajectory


def _observed(traj: Trajectory) -> set[int]:
    return {s for s, o in zip(traj.step_index, traj.obs_mask, strict=True) if o}


def step_messages(step: StepRecord) -> list[dict[str, str]]:
    """The messages the environment appended after ``step`` (none after the final answer)."""
    if step.is_final:
        return []
    if step.is_reply:
        return [{"role": "user", "content": step.observation}]
    calls = step.info.get("calls") or []
    if calls:
        return [{"role": "tool", "content": str(c["output"])} for c in calls]
    return [{"role": "tool", "content": step.observation}] if step.observation else []


def episode_chat(traj: Trajectory, prompt_messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``prompt_messages`` (the system and user messages the episode started from, as its template
    rendered them) followed by each step's assistant turn and what the environment answered."""
    observed = _observed(traj)
    chat = [{"role": m["role"], "content": m["content"]} for m in prompt_messages]
    for k, step in enumerate(traj.steps):
        chat.append({"role": "assistant", "content": step.text})
        if k in observed:
            chat.extend(step_messages(step))
    return chat
