"""The tool server's wire format, one definition for the server and its clients.

JSON as Python writes and reads it: ASCII only (a lone surrogate travels as a ``\\udXXX`` escape, so a
name or string the model wrote that is not valid UTF-8 still makes the trip), and ``NaN``,
``Infinity`` and ``-Infinity`` allowed (Python's ``json`` reads them; strict JSON parsers do not). So
whatever the in-process ``ToolEnv`` accepts reaches the server unchanged and comes back equal.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any


def _basic(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return repr(value)


def dumps(value: Any, default: Callable[[Any], Any] = _basic) -> bytes:
    """``value`` as wire bytes; values JSON has no type for go through ``default`` (repr at worst)."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=True, separators=(",", ":"), default=default)
    return text.encode("ascii")


def loads(data: bytes | str) -> Any:
    """Wire bytes back to a value (``NaN`` and surrogate escapes included)."""
    return json.loads(data)
