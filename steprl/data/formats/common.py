"""What every StepTool-format reader shares: the error types, the read statistics, the skip-or-raise
policy, chat messages with normalized roles, and the checks of a record's cells.

Why one place: every reader reports a malformed record the same way (a ``DataFormatError`` naming
the file and the 1-based line where the record starts) and can skip such records instead.
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

logger = logging.getLogger("steprl.data.formats")

OnError = Literal["skip", "raise"]
T = TypeVar("T")


class DataFormatError(ValueError):
    """A record that does not match its format. Names the file and the 1-based line where it starts."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


class RecordError(ValueError):
    """A record-level problem; the read loop adds the file and line (and skips or raises)."""


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


class Collector(Generic[T]):
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
        """Parse one record; a ``RecordError`` becomes a located error (raised or skipped)."""
        try:
            record = parse()
        except RecordError as e:
            self.fail(line, str(e))
            return
        self.add(record)


# --------------------------------------------------------------------------------------------------
# Chat messages
# --------------------------------------------------------------------------------------------------

_ROLE_MAP = {"system": "system", "user": "user", "assistant": "assistant", "function": "tool", "tool": "tool"}


def normalize_role(raw: str) -> str:
    """Map the roles used in the files (System, function, tool, ...) to system/user/assistant/tool."""
    role = _ROLE_MAP.get(str(raw).strip().lower())
    if role is None:
        raise RecordError(f"unknown role {raw!r}")
    return role


@dataclass
class ChatMessage:
    """One chat message with a normalized role (system/user/assistant/tool)."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class ToolCallRecord:
    """A tool call as stored in annotation/prediction files; ``arguments`` is the stored JSON text."""

    name: str
    arguments: str
    response: str


# --------------------------------------------------------------------------------------------------
# Cell and field checks
# --------------------------------------------------------------------------------------------------

_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def literal_list(cell: str, column: str) -> list[Any]:
    """A cell holding a Python list literal (ast.literal_eval: never eval)."""
    try:
        value = ast.literal_eval(cell)
    except _LITERAL_ERRORS as e:
        raise RecordError(f"column {column!r} is not a Python literal: {type(e).__name__}: {e}") from None
    if not isinstance(value, list):
        raise RecordError(f"column {column!r} is a {type(value).__name__}, expected a list")
    return value


def strings(values: list[Any], column: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RecordError(f"{column}[{i}] is a {type(v).__name__}, expected a string")
    return values


def numbers(values: list[Any], column: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        try:
            finite = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise RecordError(f"{column}[{i}] = {_short(v)} is not a finite number")
        out.append(float(v))
    return out


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def require(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``d[key]``, checked to exist and to be of ``kind``."""
    if not isinstance(d, dict):
        raise RecordError(f"{where} is a {type(d).__name__}, expected an object")
    if key not in d:
        raise RecordError(f"{where} has no {key!r}")
    if not isinstance(d[key], kind):
        raise RecordError(f"{where}[{key!r}] is a {type(d[key]).__name__}")
    return d[key]


def call_from_literal(text: str, where: str) -> ToolCallRecord:
    """A tool call stored as a Python dict literal (``{'name': ..., 'arguments': ..., 'response': ...}``)."""
    try:
        d = ast.literal_eval(text)
    except _LITERAL_ERRORS as e:
        raise RecordError(f"{where} is not a Python literal: {type(e).__name__}") from None
    return call_from_dict(d, where)


def call_from_dict(d: Any, where: str) -> ToolCallRecord:
    """A tool call from its stored object; non-text arguments and responses are kept as JSON text."""
    name = require(d, "name", str, where)
    return ToolCallRecord(
        name, _json_text(d.get("arguments", ""), where), _json_text(d.get("response", ""), where)
    )


def _json_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as e:  # sets, tuple keys, circular, deep
        raise RecordError(f"{where}: a value that is not JSON ({type(e).__name__})") from None
