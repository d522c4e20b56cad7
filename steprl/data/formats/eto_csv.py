"""The ETO/DPO pairs CSV: tab-separated ``prompt``/``chosen``/``rejected`` plain text (quoted,
multi-line); the prompt is a ToolLLaMA-style transcript ending in an open ``Assistant: `` turn.

A transcript may hold later ``User:`` messages (a conversation's follow-up turns); they stay user
messages of ``prompt_messages``, and the tokenizer bridge makes them observations.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.data.formats.chat_formats import split_plain
from steprl.data.formats.common import (
    ChatMessage,
    Collector,
    OnError,
    RecordError,
    Records,
    normalize_role,
)
from steprl.data.formats.files import iter_tsv

ETO_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One ETO pair: a plain-text prompt (ending in an open assistant turn) and two candidate turns."""

    prompt: str
    prompt_messages: list[ChatMessage]
    chosen: str
    rejected: str
    source_line: int


def _parse_pair(cells: dict[str, str], line: int) -> PreferencePair:
    prompt, chosen, rejected = cells["prompt"], cells["chosen"], cells["rejected"]
    if not chosen.strip() or not rejected.strip():
        raise RecordError("empty chosen or rejected response")
    try:
        pairs = split_plain(prompt)
    except RecordError as e:
        raise RecordError(f"prompt: {e}") from None
    role, content = pairs[-1]
    if role != "Assistant" or content != "":
        raise RecordError("prompt does not end with an open 'Assistant: ' turn")
    messages = [ChatMessage(normalize_role(r), c) for r, c in pairs[:-1]]
    return PreferencePair(prompt, messages, chosen, rejected, line)


def read_eto_pairs_csv(path: str | Path, on_error: OnError = "skip") -> Records[PreferencePair]:
    """Read the ETO/DPO pairs CSV (tab-separated ``prompt``/``chosen``/``rejected``, quoted multi-line
    plain text). ``source_line`` is the line where the row starts."""
    out: Collector[PreferencePair] = Collector(path, on_error)
    for line, cells in iter_tsv(path, ETO_COLUMNS):
        if isinstance(cells, str):
            out.fail(line, cells)
            continue
        out.run(line, lambda c=cells, ln=line: _parse_pair(c, ln))
    return out.out


_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Function"}


def plain_transcript(messages: list[dict[str, Any]]) -> str:
    """The ETO prompt text of a chat: ``Role: content`` lines, then the open ``Assistant: `` turn."""
    return "\n".join(f"{_PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages) + "\nAssistant: "


def preference_pair(messages: list[dict[str, Any]], chosen: str, rejected: str) -> PreferencePair:
    """An ETO pair for the assistant turn after ``messages``; ValueError when the transcript would not
    read back as these messages (a message holding a line such as ``User: ...``)."""
    prompt = plain_transcript(messages)
    pair = _parse_pair({"prompt": prompt, "chosen": chosen, "rejected": rejected}, 0)
    if [m.to_dict() for m in pair.prompt_messages] != [
        {"role": m["role"], "content": m["content"]} for m in messages
    ]:
        raise ValueError("this chat does not survive the ETO transcript (a message holds a 'Role:' line)")
    return pair


def write_eto_pairs_csv(path: str | Path, pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs as an ETO/DPO pairs CSV (tab-separated, quoted as the published file is)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n")
        out.writerow(ETO_COLUMNS)
        out.writerows([p.prompt, p.chosen, p.rejected] for p in pairs)
    return path
