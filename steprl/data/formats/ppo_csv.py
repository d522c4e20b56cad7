"""StepTool's step-grained PPO CSV (``step_grained_for_ppo_example.csv``).

Tab-separated ``prompt``/``response``/``reward``; each cell a Python list literal with one entry per
assistant turn. ``prompt[k]`` is the chat-template text that precedes turn k (system + user +
assistant header for k=0; the function result + assistant header afterwards), ``response[k]`` the
assistant turn with its end-of-turn marker, ``reward[k]`` its step reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from steprl.data.formats.chat_formats import (
    FORMATS,
    canonical_format,
    detect_chat_format,
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
    numbers,
    strings,
)
from steprl.data.formats.files import iter_tsv

PPO_COLUMNS = ("prompt", "response", "reward")


@dataclass
class OfflineStepTrajectory:
    """One PPO CSV row: the query, the assistant turns, the tool results between them, step rewards.

    ``raw_prompts``/``raw_responses`` keep the cells exactly as published (with chat-template markers)
    so the reference implementation's token layout can be reproduced.
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

    @property
    def num_turns(self) -> int:
        return len(self.turns)


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
    observations = []
    for k, segment in enumerate(prompts[1:], 1):
        msgs = segment_messages(segment, fmt, k)
        if [m.role for m in msgs] != ["tool"]:
            raise RecordError(
                f"prompt[{k}] holds roles {[m.role for m in msgs]}, expected one function result"
            )
        observations.append(msgs[0].content)
    return OfflineStepTrajectory(
        query_messages=query,
        turns=[strip_turn_end(r, fmt) for r in responses],
        observations=observations,
        step_rewards=rewards,
        source_line=line,
        chat_format=name,
        source_path=path,
        raw_prompts=prompts,
        raw_responses=responses,
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
