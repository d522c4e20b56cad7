"""StepTool's step-grained PPO CSV (``step_grained_for_ppo_example.csv``).

Tab-separated ``prompt``/``response``/``reward``; each cell a Python list literal with one entry per
assistant turn. ``prompt[k]`` is the chat-template text that precedes turn k (system + user +
assistant header for k=0; the function result + assistant header afterwards), ``response[k]`` the
assistant turn with its end-of-turn marker, ``reward[k]`` its step reward.

A conversation (a follow-up user turn after an answer) is the same layout: after a ``Finish`` turn,
``prompt[k]`` may hold one user message instead of a function result. It is an observation like a
tool result (``observation_roles[k-1] == "user"``), and turn k-1 is a reply to its user turn.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steprl.data.formats.chat_formats import (
    FORMATS,
    canonical_format,
    detect_chat_format,
    render_segment,
    render_turn,
    segment_messages,
    strip_turn_end,
)
from steprl.data.formats.common import (
    ChatMessage,
    Collector,
    OnError,
    RecordError,
    Records,
    literal_list,
    normalize_role,
    numbers,
    strings,
)
from steprl.data.formats.files import iter_tsv
from steprl.data.formats.react import finish_info

PPO_COLUMNS = ("prompt", "response", "reward")


@dataclass
class OfflineStepTrajectory:
    """One PPO CSV row: the query, the assistant turns, the tool results between them, step rewards.

    ``raw_prompts``/``raw_responses`` keep the cells exactly as published (with chat-template markers)
    so the reference implementation's token layout can be reproduced. ``observation_roles[k]`` is
    "tool" for a function result and "user" for a follow-up user message (empty: all "tool").
    """

    query_messages: list[ChatMessage]
    turns: list[str]
    observations: list[str]
    step_rewards: list[float]
    source_line: int
    chat_format: str
    source_path: str = ""
    raw_prompts: list[str] = field(default_factory=list)
    raw_responses: list[str] = field(default_factory=list)
    observation_roles: list[str] = field(default_factory=list)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def observation_role(self, k: int) -> str:
        """The role of the message after turn k: "tool" or "user" (a follow-up; turn k is a reply)."""
        return self.observation_roles[k] if self.observation_roles else "tool"


def _parse_ppo_row(cells: dict[str, str], chat_format: str, line: int, path: str) -> OfflineStepTrajectory:
    prompts = strings(literal_list(cells["prompt"], "prompt"), "prompt")
    responses = strings(literal_list(cells["response"], "response"), "response")
    rewards = numbers(literal_list(cells["reward"], "reward"), "reward")
    if not responses:
        raise RecordError("no assistant turns")
    if not len(prompts) == len(responses) == len(rewards):
        raise RecordError(f"{len(prompts)} prompts, {len(responses)} responses and {len(rewards)} rewards")
    name = detect_chat_format(prompts[0]) if chat_format == "auto" else chat_format
    fmt = FORMATS[name]
    query = segment_messages(prompts[0], fmt, 0)
    if not any(m.role == "user" for m in query):
        raise RecordError("prompt[0] has no user message")
    turns = [strip_turn_end(r, fmt) for r in responses]
    observations, roles = [], []
    for k, segment in enumerate(prompts[1:], 1):
        msgs = segment_messages(segment, fmt, k)
        kinds = [m.role for m in msgs]
        if kinds != ["tool"] and not (kinds == ["user"] and finish_info(turns[k - 1]) is not None):
            raise RecordError(
                f"prompt[{k}] holds roles {kinds}, expected one function result "
                "(or one user message after a Finish turn)"
            )
        observations.append(msgs[0].content)
        roles.append(kinds[0])
    return OfflineStepTrajectory(
        query_messages=query,
        turns=turns,
        observations=observations,
        step_rewards=rewards,
        source_line=line,
        chat_format=name,
        source_path=path,
        raw_prompts=prompts,
        raw_responses=responses,
        observation_roles=roles,
    )


def read_steptool_ppo_csv(
    path: str | Path, chat_format: str = "auto", on_error: OnError = "skip"
) -> Records[OfflineStepTrajectory]:
    """Read StepTool's step-grained PPO CSV (``step_grained_for_ppo_example.csv``).

    chat_format: "auto" (detected per row), "qwen2", "llama3" (alias "llama3-1") or "toolllama".
    Returns a list with ``.stats``; malformed rows are skipped with a warning or raised.
    """
    name = canonical_format(chat_format)
    out: Collector[OfflineStepTrajectory] = Collector(path, on_error)
    for line, cells in iter_tsv(path, PPO_COLUMNS):
        if isinstance(cells, str):
            out.fail(line, cells)
            continue
        out.run(line, lambda c=cells, ln=line: _parse_ppo_row(c, name, ln, str(path)))
    return out.out


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def offline_trajectory_from_chat(
    messages: list[dict[str, Any]], step_rewards: list[float], chat_format: str = "qwen2"
) -> OfflineStepTrajectory:
    """A PPO CSV row from a chat: the messages before the first assistant turn are the query, then
    each assistant turn is followed by one tool result or one follow-up user message (after an answer),
    and the chat ends with an assistant turn. ``step_rewards``: one per assistant turn."""
    name = canonical_format(chat_format)
    if name == "auto":
        raise ValueError("name the chat format to write (qwen2, llama3, toolllama)")
    try:
        chat = [ChatMessage(normalize_role(m["role"]), str(m["content"])) for m in messages]
    except RecordError as e:
        raise ValueError(str(e)) from None
    first = next((i for i, m in enumerate(chat) if m.role == "assistant"), len(chat))
    query = chat[:first]
    turns, observations, roles = [], [], []
    for i in range(first, len(chat), 2):
        if chat[i].role != "assistant":
            raise ValueError(f"message {i} is {chat[i].role!r}: one message between assistant turns")
        turns.append(chat[i].content)
        if i + 1 < len(chat):
            observations.append(chat[i + 1].content)
            roles.append(chat[i + 1].role)
    if len(observations) >= len(turns):
        raise ValueError("a PPO CSV row ends with an assistant turn")
    if len(step_rewards) != len(turns):
        raise ValueError(f"{len(step_rewards)} step rewards for {len(turns)} assistant turns")
    fmt = FORMATS[name]
    row = OfflineStepTrajectory(
        query, turns, observations, [float(r) for r in step_rewards], 0, name, observation_roles=roles
    )
    row.raw_prompts, row.raw_responses = ppo_cells(row, fmt.name)
    cells = {
        "prompt": repr(row.raw_prompts),
        "response": repr(row.raw_responses),
        "reward": repr(row.step_rewards),
    }
    try:
        check = _parse_ppo_row(cells, name, 0, "")
    except RecordError as e:
        raise ValueError(f"this chat does not survive the {name} format: {e}") from None
    if (check.query_messages, check.turns, check.observations, check.observation_roles) != (
        query, turns, observations, roles,
    ):  # fmt: skip
        raise ValueError(f"this chat does not survive the {name} format (a message holds its markers)")
    return row


def ppo_cells(row: OfflineStepTrajectory, chat_format: str | None = None) -> tuple[list[str], list[str]]:
    """The ``prompt`` and ``response`` lists of a row, rendered in its (or the given) chat format."""
    fmt = FORMATS[canonical_format(chat_format or row.chat_format)]
    prompts = [render_segment(row.query_messages, fmt)]
    for k, obs in enumerate(row.observations):
        prompts.append(render_segment([ChatMessage(row.observation_role(k), obs)], fmt))
    return prompts, [render_turn(t, fmt) for t in row.turns]


def write_steptool_ppo_csv(path: str | Path, rows: Iterable[OfflineStepTrajectory]) -> Path:
    """Write rows as a PPO CSV (each in its own chat format), quoted as the published files are."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n")
        out.writerow(PPO_COLUMNS)
        for row in rows:
            prompts, responses = ppo_cells(row)
            out.writerow([repr(prompts), repr(responses), repr([float(r) for r in row.step_rewards])])
    return path
