"""The ETO/DPO pairs CSV: tab-separated ``prompt``/``chosen``/``rejected`` plain text (quoted,
multi-line); the prompt is a ToolLLaMA-style transcript ending in an open ``Assistant: `` turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
