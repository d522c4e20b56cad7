"""The chat formats the PPO CSV cells are written in, and the plain-text transcripts of ETO prompts.

Three formats: qwen2 (``<|im_start|>role\\n...<|im_end|>\\n``), llama3 (``<|start_header_id|>role
<|end_header_id|>\\n\\n...<|eot_id|>``) and toolllama (``Role:\\n...\\n``). Each text is split into
(role, content) pairs; a PPO CSV prompt segment ends with the open assistant header. ``render_segment``
writes messages back (tool results under the published role name ``function``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from steprl.data.formats.common import ChatMessage, RecordError, normalize_role

CHAT_FORMATS = ("qwen2", "llama3", "toolllama")
_FORMAT_ALIASES = {"llama3-1": "llama3", "llama3.1": "llama3", "llama3_1": "llama3"}


def _split_marked(
    text: str, start: str, header_end: str, end: str, pre: tuple[str, ...]
) -> list[tuple[str, str]]:
    """Split ``<start>role<header_end>content<end>...<start>assistant<header_end>`` into (role, content);
    the last pair is the open assistant header with empty content."""
    parts = text.split(start)
    if parts[0] not in ("", *pre):
        raise RecordError(f"text before the first {start!r}: {parts[0][:40]!r}")
    out = []
    for i, part in enumerate(parts[1:], 1):
        role, sep, content = part.partition(header_end)
        if not sep:
            raise RecordError(f"message {i} has no {header_end!r} after its role")
        last = i == len(parts) - 1
        if not last:
            if content.endswith(end):
                content = content[: -len(end)]
            elif content.endswith(end.rstrip("\n")):
                content = content[: -len(end.rstrip("\n"))]
            else:
                raise RecordError(f"message {i} ({role!r}) does not end with {end.strip()!r}")
        out.append((role, content))
    return out


def _split_qwen2(text: str) -> list[tuple[str, str]]:
    return _split_marked(text, "<|im_start|>", "\n", "<|im_end|>\n", ())


def _split_llama3(text: str) -> list[tuple[str, str]]:
    return _split_marked(
        text, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", ("<|begin_of_text|>",)
    )


_PLAIN_HEADER_RE = re.compile(r"(?:^|\n)(System|User|Assistant|Function):[ \n]")


def split_plain(text: str) -> list[tuple[str, str]]:
    """``Role:\\ncontent\\n`` (toolllama) or ``Role: content\\n`` (ETO); best effort: a tool result
    containing a line that starts with ``User:`` etc. would be split there."""
    heads = list(_PLAIN_HEADER_RE.finditer(text))
    if not heads or heads[0].start() != 0:
        raise RecordError("does not start with a 'System:'/'User:'/'Assistant:'/'Function:' header")
    out = []
    for i, h in enumerate(heads):
        stop = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out.append((h.group(1), text[h.end() : stop]))
    return out


@dataclass(frozen=True)
class ChatFormat:
    name: str
    split: Callable[[str], list[tuple[str, str]]]
    turn_ends: tuple[str, ...]  # end-of-turn markers after an assistant turn, longest first
    message: str  # how one closed message is written: {role} and {content}
    roles: dict[str, str]  # normalized role -> the role name written in the files


_LOWER_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "function"}
_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Function"}
FORMATS = {
    "qwen2": ChatFormat(
        "qwen2", _split_qwen2, ("<|im_end|>\n", "<|im_end|>"), "<|im_start|>{role}\n{content}<|im_end|>\n",
        _LOWER_ROLES,
    ),
    "llama3": ChatFormat(
        "llama3", _split_llama3, ("<|eot_id|>",), "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        _LOWER_ROLES,
    ),
    "toolllama": ChatFormat("toolllama", split_plain, ("\n",), "{role}:\n{content}\n", _PLAIN_ROLES),
}  # fmt: skip


def render_segment(messages: list[ChatMessage], fmt: ChatFormat) -> str:
    """A PPO CSV prompt segment: ``messages`` closed, then the open assistant header."""
    body = "".join(fmt.message.format(role=fmt.roles[m.role], content=m.content) for m in messages)
    return body + fmt.message.split("{content}")[0].format(role=fmt.roles["assistant"])


def render_turn(turn: str, fmt: ChatFormat) -> str:
    """A PPO CSV response cell: the assistant turn and the format's end-of-turn marker."""
    return turn + fmt.turn_ends[0]


def canonical_format(chat_format: str) -> str:
    """The format's name with aliases resolved ("auto" stays); ValueError for an unknown one."""
    name = _FORMAT_ALIASES.get(chat_format, chat_format)
    if name != "auto" and name not in FORMATS:
        raise ValueError(f"chat_format must be 'auto' or one of {CHAT_FORMATS}, not {chat_format!r}")
    return name


def detect_chat_format(prompt0: str) -> str:
    """Which chat format the first prompt segment of a PPO CSV row is written in."""
    if prompt0.startswith("<|im_start|>"):
        return "qwen2"
    if prompt0.startswith(("<|start_header_id|>", "<|begin_of_text|>")):
        return "llama3"
    if re.match(r"(System|User):\n", prompt0):
        return "toolllama"
    raise RecordError(f"cannot detect the chat format of prompt {prompt0[:40]!r}")


def segment_messages(text: str, fmt: ChatFormat, k: int) -> list[ChatMessage]:
    """The closed messages of one prompt segment; the segment must end with the open assistant header."""
    try:
        pairs = fmt.split(text)
    except RecordError as e:
        raise RecordError(f"prompt[{k}] is not {fmt.name}: {e}") from None
    role, content = pairs[-1]
    if normalize_role(role) != "assistant" or content != "":
        raise RecordError(f"prompt[{k}] does not end with an open assistant header")
    return [ChatMessage(normalize_role(r), c) for r, c in pairs[:-1]]


def strip_turn_end(response: str, fmt: ChatFormat) -> str:
    for end in fmt.turn_ends:
        if response.endswith(end):
            return response[: -len(end)]
    return response
