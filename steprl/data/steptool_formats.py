"""Readers for the data formats published with StepTool (the bridge from an offline trajectory to the
token-level ``steprl.protocol.Trajectory`` is :mod:`steprl.data.steptool_tokenize`).

Why: the StepTool baselines (offline step-grained PPO, SFT, RFT, ETO) train from these files, and the
reward pipeline can take step rewards from annotated files. Every reader reports a malformed record
as a ``DataFormatError`` naming the file and the 1-based line, and can skip such records instead.

Formats (see docs/data_formats.md for invented examples):

* PPO CSV: tab-separated ``prompt``/``response``/``reward``; each cell a Python list literal with one
  entry per assistant turn. ``prompt[k]`` is the chat-template text that precedes turn k (system +
  user + assistant header for k=0; the function result + assistant header afterwards), ``response[k]``
  the assistant turn with its end-of-turn marker, ``reward[k]`` its step reward. Three chat formats:
  qwen2 (``<|im_start|>role\\n...<|im_end|>\\n``), llama3 (``<|start_header_id|>role<|end_header_id|>
  \\n\\n...<|eot_id|>``) and toolllama (``Role:\\n...\\n``).
* SFT / RFT JSON: ``{qid: {"cnt": n, "instances": [{"id", "conversations": [{"from", "value"}]}]}}``.
* ETO pairs CSV: tab-separated ``prompt``/``chosen``/``rejected`` plain text (quoted, multi-line).
* Reward annotations and converted model predictions: JSON keyed by query id.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from tools_env.parsers import ReactTurn, lenient_action_input, split_react

logger = logging.getLogger(__name__)

CHAT_FORMATS = ("qwen2", "llama3", "toolllama")
_FORMAT_ALIASES = {"llama3-1": "llama3", "llama3.1": "llama3", "llama3_1": "llama3"}
OnError = Literal["skip", "raise"]
T = TypeVar("T")

# --------------------------------------------------------------------------------------------------
# Errors and read statistics
# --------------------------------------------------------------------------------------------------


class DataFormatError(ValueError):
    """A record that does not match its format. Names the file and the 1-based line where it starts."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


class ChatTemplateError(ValueError):
    """The tokenizer's chat template is not prefix-stable, so turns cannot be cut into token deltas."""


class _Bad(ValueError):
    """A record-level problem; the read loop adds the file and line."""


@dataclass
class ReadStats:
    """What a read did: how many records it returned and which ones it skipped (line, reason)."""

    path: str
    records: int = 0
    skipped: int = 0
    skipped_records: list[tuple[int, str]] = field(default_factory=list)


class Records(list, Generic[T]):
    """The parsed records (a plain list) with the ``ReadStats`` of the read attached as ``.stats``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.stats = ReadStats(path=str(path))


class _Collector(Generic[T]):
    """Collects records and applies the on_error policy, so every reader behaves the same way."""

    def __init__(self, path: str | Path, on_error: OnError) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.path = str(path)
        self.on_error = on_error
        self.out: Records[T] = Records(path)

    def add(self, record: T) -> None:
        self.out.append(record)
        self.out.stats.records += 1

    def fail(self, line: int, message: str) -> None:
        err = DataFormatError(self.path, line, message)
        if self.on_error == "raise":
            raise err
        logger.warning("skipping malformed record: %s", err)
        self.out.stats.skipped += 1
        self.out.stats.skipped_records.append((line, message))

    def run(self, line: int, parse: Callable[[], T]) -> None:
        """Parse one record; a ``_Bad`` becomes a located error (raised or skipped)."""
        try:
            record = parse()
        except _Bad as e:
            self.fail(line, str(e))
            return
        self.add(record)


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------

_ROLE_MAP = {"system": "system", "user": "user", "assistant": "assistant", "function": "tool", "tool": "tool"}


def normalize_role(raw: str) -> str:
    """Map the roles used in the files (System, function, tool, ...) to system/user/assistant/tool."""
    role = _ROLE_MAP.get(str(raw).strip().lower())
    if role is None:
        raise _Bad(f"unknown role {raw!r}")
    return role


@dataclass
class ChatMessage:
    """One chat message with a normalized role (system/user/assistant/tool)."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


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


@dataclass
class Conversation:
    """One SFT/RFT instance: a full chat, ``source_id`` is the instance id (e.g. "Step 4: <query>")."""

    messages: list[ChatMessage]
    source_id: str
    query_id: str = ""
    source_line: int = 0

    def to_messages(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]


@dataclass
class PreferencePair:
    """One ETO pair: a plain-text prompt (ending in an open assistant turn) and two candidate turns."""

    prompt: str
    prompt_messages: list[ChatMessage]
    chosen: str
    rejected: str
    source_line: int


@dataclass
class ToolCallRecord:
    """A tool call as stored in annotation/prediction files; ``arguments`` is the stored JSON text."""

    name: str
    arguments: str
    response: str


_STATUS_VALUE = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}


@dataclass
class StepAnnotation:
    """Judge annotations for one trajectory, one list entry per judge sample (the paper samples k=3).

    ``succ_calling[j][t]`` in {0, 1} and ``contribution[j][t]`` in 0..5 (raw) for intermediate step t;
    ``final_answer_status[j]`` is "Solved", "Unsure" or "Unsolved".
    """

    query_id: str
    query: str
    tool_names: list[str]
    steps: list[ToolCallRecord]
    final_step: ToolCallRecord | None
    succ_calling: list[list[int]]
    contribution: list[list[float]]
    final_answer_status: list[str]
    source_line: int = 0

    def is_solved(self) -> float:
        """IsSolved averaged over judge samples (Solved=1, Unsure=0.5, Unsolved=0)."""
        if not self.final_answer_status:
            return 0.0
        return sum(_STATUS_VALUE[s] for s in self.final_answer_status) / len(self.final_answer_status)

    def step_rewards(self, alpha: float = 1.0) -> list[float]:
        """StepTool rewards: ``(alpha*SuccCalling + Contribution/5) / (1+alpha)`` per intermediate step,
        averaged over judge samples, then IsSolved for the final step."""
        out = []
        for t in range(len(self.steps)):
            vals = [
                (alpha * s[t] + c[t] / 5.0) / (1.0 + alpha)
                for s, c in zip(self.succ_calling, self.contribution, strict=True)
            ]
            out.append(sum(vals) / len(vals) if vals else 0.0)
        return [*out, self.is_solved()]


@dataclass
class Prediction:
    """One converted model prediction: the query, the tools offered and the linear chain of calls."""

    query_id: str
    query: str
    available_tools: list[dict[str, Any]]
    method: str
    total_steps: int
    final_answer: str  # stored text: a JSON object with return_type / final_answer
    calls: list[ToolCallRecord]
    source_line: int = 0

    def finish(self) -> FinishInfo | None:
        """How the episode ended, from its last call if that call is ``Finish``."""
        if not self.calls or self.calls[-1].name.strip().lower() != "finish":
            return None
        return _finish_from_input(_parse_action_input(self.calls[-1].arguments))


# --------------------------------------------------------------------------------------------------
# ReAct turns
# --------------------------------------------------------------------------------------------------


class FinishInfo(NamedTuple):
    """A ``Finish`` call: return_type is "give_answer" or "give_up_and_restart" (or what the text says)."""

    return_type: str
    final_answer: str | None


_RETURN_TYPE_RE = re.compile(r'"return_type"\s*:\s*"([^"]*)"')
_FINAL_ANSWER_RE = re.compile(r'"final_answer"\s*:\s*"((?:[^"\\]|\\.)*)', re.S)
_parse_action_input = lenient_action_input


def parse_react_turn(text: str) -> ReactTurn:
    """Split a ReAct assistant turn into (thought, action, action_input): the one ReAct grammar of
    ``tools_env.parsers`` in its lenient mode.

    Tolerates what the published data contains: a missing ``Thought:`` (toolllama), an empty thought,
    a leading newline, end-of-turn tokens, pretty-printed or invalid JSON input (kept as text).
    """
    return split_react(text, "lenient")


def _finish_from_input(action_input: dict[str, Any] | str) -> FinishInfo:
    if isinstance(action_input, dict):
        answer = action_input.get("final_answer")
        rt = action_input.get("return_type")
        if rt is None:
            rt = "give_answer" if answer is not None else "unknown"
        return FinishInfo(str(rt), None if answer is None else str(answer))
    rt_m = _RETURN_TYPE_RE.search(action_input)
    fa_m = _FINAL_ANSWER_RE.search(action_input)
    answer = None
    if fa_m:
        try:
            answer = json.loads(f'"{fa_m.group(1)}"', strict=False)
        except json.JSONDecodeError:
            answer = fa_m.group(1)
    rt = rt_m.group(1) if rt_m else ("give_answer" if answer is not None else "unknown")
    return FinishInfo(rt, answer)


def finish_info(turn: ReactTurn | str) -> FinishInfo | None:
    """The ``Finish`` call of a turn (return type and final answer), or None for a tool call.

    In the published data the final answer is ``Action: Finish`` with input
    ``{"return_type": "give_answer", "final_answer": "..."}`` (sometimes only ``final_answer``), or
    ``{"return_type": "give_up_and_restart"}``.
    """
    if isinstance(turn, str):
        turn = parse_react_turn(turn)
    if turn.action is None or turn.action.strip().lower() != "finish":
        return None
    return _finish_from_input(turn.action_input)


def is_final_turn(text: str) -> bool:
    """True when the turn calls ``Finish`` (gives an answer or gives up)."""
    return finish_info(text) is not None


# --------------------------------------------------------------------------------------------------
# Chat-format segments of the PPO CSV
# --------------------------------------------------------------------------------------------------


def _split_marked(
    text: str, start: str, header_end: str, end: str, pre: tuple[str, ...]
) -> list[tuple[str, str]]:
    """Split ``<start>role<header_end>content<end>...<start>assistant<header_end>`` into (role, content);
    the last pair is the open assistant header with empty content."""
    parts = text.split(start)
    if parts[0] not in ("", *pre):
        raise _Bad(f"text before the first {start!r}: {parts[0][:40]!r}")
    out = []
    for i, part in enumerate(parts[1:], 1):
        role, sep, content = part.partition(header_end)
        if not sep:
            raise _Bad(f"message {i} has no {header_end!r} after its role")
        last = i == len(parts) - 1
        if not last:
            if content.endswith(end):
                content = content[: -len(end)]
            elif content.endswith(end.rstrip("\n")):
                content = content[: -len(end.rstrip("\n"))]
            else:
                raise _Bad(f"message {i} ({role!r}) does not end with {end.strip()!r}")
        out.append((role, content))
    return out


def _split_qwen2(text: str) -> list[tuple[str, str]]:
    return _split_marked(text, "<|im_start|>", "\n", "<|im_end|>\n", ())


def _split_llama3(text: str) -> list[tuple[str, str]]:
    return _split_marked(
        text, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", ("<|begin_of_text|>",)
    )


_PLAIN_HEADER_RE = re.compile(r"(?:^|\n)(System|User|Assistant|Function):[ \n]")


def _split_plain(text: str) -> list[tuple[str, str]]:
    """``Role:\\ncontent\\n`` (toolllama) or ``Role: content\\n`` (ETO); best effort: a tool result
    containing a line that starts with ``User:`` etc. would be split there."""
    heads = list(_PLAIN_HEADER_RE.finditer(text))
    if not heads or heads[0].start() != 0:
        raise _Bad("does not start with a 'System:'/'User:'/'Assistant:'/'Function:' header")
    out = []
    for i, h in enumerate(heads):
        stop = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out.append((h.group(1), text[h.end() : stop]))
    return out


@dataclass(frozen=True)
class _ChatFormat:
    name: str
    split: Callable[[str], list[tuple[str, str]]]
    turn_ends: tuple[str, ...]  # end-of-turn markers after an assistant turn, longest first


_FORMATS = {
    "qwen2": _ChatFormat("qwen2", _split_qwen2, ("<|im_end|>\n", "<|im_end|>")),
    "llama3": _ChatFormat("llama3", _split_llama3, ("<|eot_id|>",)),
    "toolllama": _ChatFormat("toolllama", _split_plain, ("\n",)),
}


def _canonical_format(chat_format: str) -> str:
    name = _FORMAT_ALIASES.get(chat_format, chat_format)
    if name != "auto" and name not in _FORMATS:
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
    raise _Bad(f"cannot detect the chat format of prompt {prompt0[:40]!r}")


def _segment_messages(text: str, fmt: _ChatFormat, k: int) -> list[ChatMessage]:
    """The closed messages of one prompt segment; the segment must end with the open assistant header."""
    try:
        pairs = fmt.split(text)
    except _Bad as e:
        raise _Bad(f"prompt[{k}] is not {fmt.name}: {e}") from None
    role, content = pairs[-1]
    if normalize_role(role) != "assistant" or content != "":
        raise _Bad(f"prompt[{k}] does not end with an open assistant header")
    return [ChatMessage(normalize_role(r), c) for r, c in pairs[:-1]]


def _strip_turn_end(response: str, fmt: _ChatFormat) -> str:
    for end in fmt.turn_ends:
        if response.endswith(end):
            return response[: -len(end)]
    return response


# --------------------------------------------------------------------------------------------------
# Low-level readers (TSV rows and JSON entries with their line numbers)
# --------------------------------------------------------------------------------------------------


def _raise_csv_field_limit() -> None:
    """Cells hold whole trajectories; the csv default (128 KiB) is too small."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _iter_tsv(path: str | Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Yield (start line, {column: cell}) for each row, or (line, error text) for a row of wrong width."""
    _raise_csv_field_limit()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(path, 1, "empty file: expected a header row")
            missing = [c for c in required if c not in header]
            if missing:
                raise DataFormatError(path, 1, f"header lacks column(s) {missing}; found {header}")
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    yield line, f"expected {len(header)} tab-separated fields, found {len(row)}"
                else:
                    yield line, dict(zip(header, row, strict=True))
        except csv.Error as e:
            raise DataFormatError(path, reader.line_num, f"CSV error: {e}") from None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class _LineCounter:
    """Line number of a character offset, counted incrementally (offsets only grow)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _iter_json_entries(path: str | Path) -> Iterator[tuple[str, Any, int]]:
    """Yield (key, value, line) for each entry of a top-level JSON object (key = index for an array).

    Decoding entry by entry gives every record its line; a syntax error stops the read (the rest
    of the file cannot be resynchronised) and is always raised.
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = _LineCounter(text)
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] not in "{[":
        raise DataFormatError(path, lines.at(i), "expected a JSON object or array at the top level")
    close = "}" if text[i] == "{" else "]"
    i = _skip_ws(text, i + 1)
    index = 0
    try:
        while i < len(text) and text[i] != close:
            line = lines.at(i)
            if close == "}":
                if text[i] != '"':
                    raise DataFormatError(path, line, "expected a string key")
                key, i = scanstring(text, i + 1)
                i = _skip_ws(text, i)
                if i >= len(text) or text[i] != ":":
                    raise DataFormatError(path, lines.at(i), "expected ':' after a key")
                i = _skip_ws(text, i + 1)
            else:
                key = str(index)
            value, i = dec.raw_decode(text, i)
            yield key, value, line
            index += 1
            i = _skip_ws(text, i)
            if i < len(text) and text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif i >= len(text) or text[i] != close:
                raise DataFormatError(path, lines.at(i), f"expected ',' or {close!r}")
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg}") from None
    if i >= len(text):
        raise DataFormatError(path, lines.at(i), f"unterminated top-level value: missing {close!r}")
    if _skip_ws(text, i + 1) != len(text):
        raise DataFormatError(path, lines.at(i + 1), "extra data after the top-level value")


def _literal_list(cell: str, column: str) -> list[Any]:
    """A cell holding a Python list literal (ast.literal_eval: never eval)."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise _Bad(f"column {column!r} is not a Python literal: {type(e).__name__}: {e}") from None
    if not isinstance(value, list):
        raise _Bad(f"column {column!r} is a {type(value).__name__}, expected a list")
    return value


def _strings(values: list[Any], column: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise _Bad(f"{column}[{i}] is a {type(v).__name__}, expected a string")
    return values


def _numbers(values: list[Any], column: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _Bad(f"{column}[{i}] = {v!r} is not a finite number")
        out.append(float(v))
    return out


def _require(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict):
        raise _Bad(f"{where} is a {type(d).__name__}, expected an object")
    if key not in d:
        raise _Bad(f"{where} has no {key!r}")
    if not isinstance(d[key], kind):
        raise _Bad(f"{where}[{key!r}] is a {type(d[key]).__name__}")
    return d[key]


# --------------------------------------------------------------------------------------------------
# PPO CSV
# --------------------------------------------------------------------------------------------------


def _parse_ppo_row(cells: dict[str, str], chat_format: str, line: int, path: str) -> OfflineStepTrajectory:
    prompts = _strings(_literal_list(cells["prompt"], "prompt"), "prompt")
    responses = _strings(_literal_list(cells["response"], "response"), "response")
    rewards = _numbers(_literal_list(cells["reward"], "reward"), "reward")
    if not responses:
        raise _Bad("no assistant turns")
    if not len(prompts) == len(responses) == len(rewards):
        raise _Bad(f"{len(prompts)} prompts, {len(responses)} responses and {len(rewards)} rewards")
    name = detect_chat_format(prompts[0]) if chat_format == "auto" else chat_format
    fmt = _FORMATS[name]
    query = _segment_messages(prompts[0], fmt, 0)
    if not any(m.role == "user" for m in query):
        raise _Bad("prompt[0] has no user message")
    observations = []
    for k, segment in enumerate(prompts[1:], 1):
        msgs = _segment_messages(segment, fmt, k)
        if [m.role for m in msgs] != ["tool"]:
            raise _Bad(f"prompt[{k}] holds roles {[m.role for m in msgs]}, expected one function result")
        observations.append(msgs[0].content)
    return OfflineStepTrajectory(
        query_messages=query,
        turns=[_strip_turn_end(r, fmt) for r in responses],
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
    name = _canonical_format(chat_format)
    out: _Collector[OfflineStepTrajectory] = _Collector(path, on_error)
    for line, cells in _iter_tsv(path, ("prompt", "response", "reward")):
        if isinstance(cells, str):
            out.fail(line, cells)
            continue
        out.run(line, lambda c=cells, ln=line: _parse_ppo_row(c, name, ln, str(path)))
    return out.out


# --------------------------------------------------------------------------------------------------
# SFT / RFT JSON
# --------------------------------------------------------------------------------------------------


def _parse_conversation(qid: str, i: int, inst: Any, line: int) -> Conversation:
    where = f"query {qid!r} instance {i}"
    convo = _require(inst, "conversations", list, where)
    if not convo:
        raise _Bad(f"{where} has an empty conversation")
    messages = []
    for j, m in enumerate(convo):
        role = _require(m, "from", str, f"{where} message {j}")
        value = _require(m, "value", str, f"{where} message {j}")
        try:
            messages.append(ChatMessage(normalize_role(role), value))
        except _Bad as e:
            raise _Bad(f"{where} message {j}: {e}") from None
    if not any(m.role == "assistant" for m in messages):
        raise _Bad(f"{where} has no assistant message")
    source_id = inst.get("id")
    return Conversation(messages, str(source_id) if source_id is not None else f"{qid}#{i}", qid, line)


def _read_conversations(path: str | Path, on_error: OnError) -> Records[Conversation]:
    out: _Collector[Conversation] = _Collector(path, on_error)
    for qid, entry, line in _iter_json_entries(path):
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


# --------------------------------------------------------------------------------------------------
# ETO / DPO pairs CSV
# --------------------------------------------------------------------------------------------------


def _parse_pair(cells: dict[str, str], line: int) -> PreferencePair:
    prompt, chosen, rejected = cells["prompt"], cells["chosen"], cells["rejected"]
    if not chosen.strip() or not rejected.strip():
        raise _Bad("empty chosen or rejected response")
    try:
        pairs = _split_plain(prompt)
    except _Bad as e:
        raise _Bad(f"prompt: {e}") from None
    role, content = pairs[-1]
    if role != "Assistant" or content != "":
        raise _Bad("prompt does not end with an open 'Assistant: ' turn")
    messages = [ChatMessage(normalize_role(r), c) for r, c in pairs[:-1]]
    return PreferencePair(prompt, messages, chosen, rejected, line)


def read_eto_pairs_csv(path: str | Path, on_error: OnError = "skip") -> Records[PreferencePair]:
    """Read the ETO/DPO pairs CSV (tab-separated ``prompt``/``chosen``/``rejected``, quoted multi-line
    plain text). ``source_line`` is the line where the row starts."""
    out: _Collector[PreferencePair] = _Collector(path, on_error)
    for line, cells in _iter_tsv(path, ("prompt", "chosen", "rejected")):
        if isinstance(cells, str):
            out.fail(line, cells)
            continue
        out.run(line, lambda c=cells, ln=line: _parse_pair(c, ln))
    return out.out


# --------------------------------------------------------------------------------------------------
# Reward annotations and converted predictions
# --------------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"Step (\d+): (.*)\Z", re.S)
_FINAL_RE = re.compile(r"Final step: (.*)\Z", re.S)


def _call_from_literal(text: str, where: str) -> ToolCallRecord:
    try:
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise _Bad(f"{where} is not a Python literal: {type(e).__name__}") from None
    return _call_from_dict(d, where)


def _call_from_dict(d: Any, where: str) -> ToolCallRecord:
    name = _require(d, "name", str, where)
    args = d.get("arguments", "")
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    resp = d.get("response", "")
    resp = resp if isinstance(resp, str) else json.dumps(resp, ensure_ascii=False)
    return ToolCallRecord(name, args, resp)


def _samples(d: Any, where: str) -> list[Any]:
    if not isinstance(d, dict) or not d:
        raise _Bad(f"{where} is not a non-empty object of judge samples")
    try:
        keys = sorted(d, key=int)
    except ValueError:
        raise _Bad(f"{where} has non-numeric sample keys") from None
    return [d[k] for k in keys]


def _status(raw: Any) -> str:
    s = str(raw).removeprefix("AnswerStatus.")
    if s not in _STATUS_VALUE:
        raise _Bad(f"unknown answer status {raw!r}")
    return s


def _parse_annotation(qid: str, d: Any, line: int) -> StepAnnotation:
    where = f"query {qid!r}"
    query = _require(d, "query", str, where)
    raw_steps = _require(d, "answer_steps", list, where)
    steps = []
    for t, s in enumerate(raw_steps):
        m = _STEP_RE.match(s) if isinstance(s, str) else None
        if not m or int(m.group(1)) != t + 1:
            raise _Bad(f"{where} answer_steps[{t}] does not start with 'Step {t + 1}: '")
        steps.append(_call_from_literal(m.group(2), f"{where} step {t + 1}"))
    final_raw = d.get("final_step") or ""
    final = None
    if final_raw:
        m = _FINAL_RE.match(final_raw) if isinstance(final_raw, str) else None
        if not m:
            raise _Bad(f"{where} final_step does not start with 'Final step: '")
        final = _call_from_literal(m.group(1), f"{where} final step")
    succ, contrib = [], []
    for j, sample in enumerate(_samples(d.get("process_reward"), f"{where} process_reward")):
        s = _require(sample, "succeed_tool_calling", list, f"{where} sample {j}")
        c = _require(sample, "contributions", list, f"{where} sample {j}")
        if len(s) != len(steps) or len(c) != len(steps):
            raise _Bad(f"{where} sample {j}: {len(s)}/{len(c)} scores for {len(steps)} steps")
        if any(isinstance(v, bool) or v not in (0, 1) for v in s):
            raise _Bad(f"{where} sample {j}: succeed_tool_calling must be 0/1, got {s}")
        c = _numbers(c, f"{where} sample {j} contributions")
        if any(not 0 <= v <= 5 for v in c):
            raise _Bad(f"{where} sample {j}: contributions must be in 0..5, got {c}")
        succ.append([int(v) for v in s])
        contrib.append([int(v) if v.is_integer() else v for v in c])
    statuses = [_status(v) for v in _samples(d.get("is_solved"), f"{where} is_solved")]
    tools = d.get("tool_names", [])
    return StepAnnotation(qid, query, list(tools), steps, final, succ, contrib, statuses, line)


def read_reward_annotations(path: str | Path, on_error: OnError = "skip") -> Records[StepAnnotation]:
    """Read judge annotations (``data/reward_annotation/...``): per query, the steps as
    ``"Step n: {python dict}"``, per judge sample the SuccCalling/Contribution lists, and IsSolved."""
    out: _Collector[StepAnnotation] = _Collector(path, on_error)
    for qid, entry, line in _iter_json_entries(path):
        out.run(line, lambda q=qid, e=entry, ln=line: _parse_annotation(q, e, ln))
    return out.out


def _chain_calls(roots: list[Any], where: str) -> list[ToolCallRecord]:
    """Walk the answer_details tree; only linear chains (one child per node) are supported."""
    calls, nodes, depth = [], roots, 0
    while nodes:
        if len(nodes) != 1:
            raise _Bad(f"{where}: answer_details branches ({len(nodes)} children at depth {depth})")
        node = nodes[0]
        role = _require(node, "role", str, f"{where} node {depth}")
        if role == "tool":
            msg = node.get("message")
            if isinstance(msg, str):
                try:
                    msg = ast.literal_eval(msg)
                except (ValueError, SyntaxError):
                    raise _Bad(f"{where} node {depth}: tool message is not a call") from None
            calls.append(_call_from_dict(msg, f"{where} node {depth}"))
        nodes = node.get("next") or []
        depth += 1
    return calls


def _parse_prediction(qid: str, d: Any, line: int) -> Prediction:
    where = f"query {qid!r}"
    query = _require(d, "query", str, where)
    answer = _require(d, "answer", dict, where)
    roots = _require(answer, "answer_details", list, f"{where} answer")
    return Prediction(
        query_id=qid,
        query=query,
        available_tools=list(d.get("available_tools", [])),
        method=str(answer.get("method", "")),
        total_steps=int(answer.get("total_steps", 0)),
        final_answer=str(answer.get("final_answer", "")),
        calls=_chain_calls(roots, where),
        source_line=line,
    )


def read_predictions(path: str | Path, on_error: OnError = "skip") -> Records[Prediction]:
    """Read converted model predictions (``data/model_predictions_converted/...``, ToolEval layout):
    per query the tools offered and ``answer.answer_details``, a chain of nodes whose ``tool`` nodes
    hold ``{name, arguments, response}``; the chain ends with the ``Finish`` call."""
    out: _Collector[Prediction] = _Collector(path, on_error)
    for qid, entry, line in _iter_json_entries(path):
        out.run(line, lambda q=qid, e=entry, ln=line: _parse_prediction(q, e, ln))
    return out.out
