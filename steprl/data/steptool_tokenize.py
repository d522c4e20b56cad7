"""Offline StepTool trajectories -> chat messages -> token ids, through the tokenizer's own chat template.

The bridge between the published formats (read in :mod:`steprl.data.formats`) and training:
each assistant turn becomes action tokens of its step, each tool result observation tokens, with the
same prefix-stability check the live episodes use. A follow-up user message (a conversation) is an
observation too, like in the episode loop: the turn before it is a reply (``is_reply``) and the step
index moves on, so the user's tokens are masked out of every loss and carry no reward.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from steprl.data.formats import FinishInfo, OfflineStepTrajectory, finish_info, parse_react_turn
from steprl.protocol import StepRecord, Trajectory


class ChatTemplateError(ValueError):
    """The tokenizer's chat template is not prefix-stable, so turns cannot be cut into token deltas."""


LAYOUTS = ("template", "rollout")


def to_messages(traj: OfflineStepTrajectory) -> list[dict[str, str]]:
    """The chat as role/content dicts (system/user/assistant/tool) for any tokenizer's chat template."""
    msgs = [m.to_dict() for m in traj.query_messages]
    for k, turn in enumerate(traj.turns):
        msgs.append({"role": "assistant", "content": turn})
        if k < len(traj.observations):
            msgs.append({"role": traj.observation_role(k), "content": traj.observations[k]})
    return msgs


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    res = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(res, Mapping):
        res = res["input_ids"]
    if hasattr(res, "tolist"):
        res = res.tolist()
    if res and isinstance(res[0], list):
        if len(res) != 1:
            raise ChatTemplateError("apply_chat_template returned a batch for one conversation")
        res = res[0]
    return [int(x) for x in res]


def _check_prefix(prev: list[int], ids: list[int], index: int, role: str) -> None:
    if ids[: len(prev)] == prev:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(prev, ids, strict=False)) if a != b), min(len(prev), len(ids))
    )
    raise ChatTemplateError(
        f"chat template is not prefix-stable: adding message {index} ({role}) changed earlier tokens "
        f"(first difference at token {at} of {len(prev)}); token deltas per turn are not defined for "
        "this template (e.g. it rewrites earlier assistant turns)"
    )


def _group_of(messages: list[dict[str, str]]) -> str:
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def _step_records(traj: OfflineStepTrajectory) -> tuple[list[StepRecord], FinishInfo | None]:
    """One StepRecord per turn; a ``Finish`` turn followed by a user message is a reply of its turn,
    only a ``Finish`` as the last turn is the final answer."""
    steps, fin, turn = [], None, 0
    last = len(traj.turns) - 1
    for k, turn_text in enumerate(traj.turns):
        rt = parse_react_turn(turn_text)
        fin = finish_info(rt)
        error = None
        if rt.action is None:
            error = "no 'Action:' line"
        elif isinstance(rt.action_input, str):
            error = "'Action Input' is not a JSON object"
        calls = [{"name": rt.action, "arguments": rt.action_input}] if rt.action else []
        info: dict[str, Any] = {"return_type": fin.return_type} if fin else {}
        obs = traj.observations[k] if k < len(traj.observations) else ""
        is_reply = k < len(traj.observations) and traj.observation_role(k) == "user"
        if is_reply and fin is not None:
            info["answer"] = fin.final_answer
        steps.append(
            StepRecord(
                turn_text, calls, obs, fin is not None and k == last, error, reward=traj.step_rewards[k],
                info=info, turn=turn, is_reply=is_reply,
            )
        )  # fmt: skip
        turn += is_reply
    return steps, fin


def tokenize_offline_trajectory(
    traj: OfflineStepTrajectory,
    tokenizer: Any,
    *,
    task_id: str | None = None,
    group_id: str | None = None,
    layout: Literal["template", "rollout"] = "template",
) -> Trajectory:
    """Token ids for an offline trajectory, turn by turn, as chat-template token deltas.

    ``layout="template"``: the template is applied to growing message prefixes; each assistant turn's
    delta is step k's action tokens, everything else is observation (the ids are those of the whole
    chat templated at once). ``layout="rollout"``: the spans the episode loop records for the same
    chat (``steprl.chat.encode_conversation``: an assistant turn is its content tokens and the
    end-of-turn token, what an engine generates; the rest of the template's text is observation).
    Raises ChatTemplateError when a longer prefix changes earlier tokens (then per-turn spans are not
    defined). Step rewards come from the file; rollout log-probs are unknown offline (zeros;
    ``meta["has_rollout_logprobs"] = False``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if len(traj.step_rewards) != len(traj.turns) or not traj.turns:
        raise ValueError(f"{len(traj.turns)} turns and {len(traj.step_rewards)} step rewards")
    messages = to_messages(traj)
    n_query = len(traj.query_messages)
    source = Path(traj.source_path).name if traj.source_path else "offline"
    out = Trajectory(
        task_id=task_id or f"{source}:{traj.source_line}",
        prompt_ids=[],
        group_id=group_id if group_id is not None else _group_of(messages[:n_query]),
        meta={
            "source": "steptool_csv",
            "source_path": traj.source_path,
            "source_line": traj.source_line,
            "chat_format": traj.chat_format,
            "has_rollout_logprobs": False,
        },
    )
    if layout == "template":
        _template_spans(out, tokenizer, messages, n_query)
    else:
        _rollout_spans(out, tokenizer, messages)
    out.steps, fin = _step_records(traj)
    out.done = fin is not None
    out.truncated = fin is None
    out.end_reason = "answer" if fin is not None else "max_turns"
    out.is_solved = traj.step_rewards[-1] if fin is not None else 0.0
    out.final_answer = fin.final_answer if fin is not None else None
    out.validate()
    return out


def _template_spans(out: Trajectory, tokenizer: Any, messages: list[dict[str, str]], n_query: int) -> None:
    """Prompt and spans as deltas of the template applied to growing prefixes of ``messages``."""
    out.prompt_ids = prev = _template_ids(tokenizer, messages[:n_query], add_generation_prompt=True)
    step = -1
    for i in range(n_query, len(messages)):
        role = messages[i]["role"]
        next_is_assistant = i + 1 < len(messages) and messages[i + 1]["role"] == "assistant"
        ids = _template_ids(tokenizer, messages[: i + 1], add_generation_prompt=next_is_assistant)
        _check_prefix(prev, ids, i, role)
        delta = ids[len(prev) :]
        if role == "assistant":
            step += 1
            if not delta:
                raise ChatTemplateError(f"assistant turn {step} produced no tokens")
        out.append(delta, is_action=role == "assistant", step=max(step, 0))
        prev = ids


def _rollout_spans(out: Trajectory, tokenizer: Any, messages: list[dict[str, str]]) -> None:
    """Prompt and spans as the episode loop records them (``steprl.chat.encode_conversation``)."""
    from steprl.chat import TemplateError, encode_conversation

    try:
        spans = encode_conversation(tokenizer, messages, out.task_id)
    except TemplateError as e:
        raise ChatTemplateError(str(e)) from e
    out.prompt_ids = spans.prompt_ids
    out.response_ids, out.action_mask, out.obs_mask = spans.response_ids, spans.action_mask, spans.obs_mask
    out.step_index, out.rollout_logprobs = spans.step_index, spans.rollout_logprobs
