"""The SFT and RFT JSON files: ``{qid: {"cnt": n, "instances": [{"id", "conversations": [{"from",
"value"}]}]}}``, one chat per instance (a DFS prefix of a solution path, ending with an assistant turn).

A chat may hold later user messages: the DFS "previous trials failed" note after a tool result, or a
conversation's follow-up user turn after an answer. The reader keeps them as they are; the tokenizer
bridge (``steprl.chat.encode_conversation``) makes each an observation, and the assistant turn right
before a follow-up a reply (``is_reply``) of its user turn, as the episode loop does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.data.formats.common import (
    ChatMessage,
    Collector,
    OnError,
    RecordError,
    Records,
    normalize_role,
    require,
)
from steprl.data.formats.files import iter_json_entries


@dataclass
class Conversation:
    """One SFT/RFT instance: a full chat, ``source_id`` is the instance id (e.g. "Step 4: <query>")."""

    messages: list[ChatMessage]
    source_id: str
    query_id: str = ""
    source_line: int = 0

    def to_messages(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]


def _parse_conversation(qid: str, i: int, inst: Any, line: int) -> Conversation:
    where = f"query {qid!r} instance {i}"
    convo = require(inst, "conversations", list, where)
    if not convo:
        raise RecordError(f"{where} has an empty conversation")
    messages = []
    for j, m in enumerate(convo):
        role = require(m, "from", str, f"{where} message {j}")
        value = require(m, "value", str, f"{where} message {j}")
        try:
            messages.append(ChatMessage(normalize_role(role), value))
        except RecordError as e:
            raise RecordError(f"{where} message {j}: {e}") from None
    if not any(m.role == "assistant" for m in messages):
        raise RecordError(f"{where} has no assistant message")
    source_id = inst.get("id")
    return Conversation(messages, str(source_id) if source_id is not None else f"{qid}#{i}", qid, line)


def _read_conversations(path: str | Path, on_error: OnError) -> Records[Conversation]:
    out: Collector[Conversation] = Collector(path, on_error)
    for qid, entry, line in iter_json_entries(path):
        if not isinstance(entry, dict) or not isinstance(entry.get("instances"), list):
            out.fail(line, f"query {qid!r} has no 'instances' list")
            continue
        for i, inst in enumerate(entry["instances"]):
            out.run(line, lambda q=qid, i=i, x=inst, ln=line: _parse_conversation(q, i, x, ln))
    return out.out


def read_sft_json(path: str | Path, on_error: OnError = "skip") -> Records[Conversation]:
    """Read the SFT JSON (``{qid: {"cnt", "instances": [{"id", "conversations": [{"from", "value"}]}]}}``).

    One Conversation per instance; roles normalized (function -> tool). Each instance is a DFS prefix
    of the solution path, ending with an assistant turn.
    """
    return _read_conversations(path, on_error)


def read_rft_json(path: str | Path, on_error: OnError = "skip") -> Records[Conversation]:
    """Read the RFT JSON: same layout as the SFT JSON (its tool results use both "function" and "tool")."""
    return _read_conversations(path, on_error)


_FILE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "function"}


def conversation_from_chat(
    messages: list[dict[str, Any]], source_id: str, query_id: str = ""
) -> Conversation:
    """A Conversation from role/content dicts (roles system/user/assistant/tool)."""
    try:
        chat = [ChatMessage(normalize_role(m["role"]), str(m["content"])) for m in messages]
    except RecordError as e:
        raise ValueError(str(e)) from None
    if not any(m.role == "assistant" for m in chat):
        raise ValueError(f"{source_id}: a conversation needs an assistant turn")
    return Conversation(chat, source_id, query_id)


def write_sft_json(path: str | Path, conversations: Iterable[Conversation]) -> Path:
    """Write conversations as an SFT/RFT JSON file: instances grouped by ``query_id`` (the instance's
    ``source_id`` when it has none), tool results under the published role name ``function``."""
    doc: dict[str, dict[str, Any]] = {}
    for conv in conversations:
        entry = doc.setdefault(conv.query_id or conv.source_id, {"cnt": 0, "instances": []})
        entry["instances"].append(
            {
                "id": conv.source_id,
                "conversations": [{"from": _FILE_ROLES[m.role], "value": m.content} for m in conv.messages],
            }
        )
        entry["cnt"] = len(entry["instances"])
    path = Path(path)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    return path
