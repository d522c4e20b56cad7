"""ReAct turns of the published data, read with the one ReAct grammar of ``tools_env.parsers``.

Why a module here: the formats need more than a parse (which turn is the ``Finish`` answer, its
return type, the answer text even when the stored JSON is cut short); the grammar itself is
``tools_env.parsers.split_react`` in its lenient mode, never a second parser.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from tools_env.parsers import REACT_FINISH, ReactTurn, lenient_action_input, split_react

__all__ = ["FinishInfo", "ReactTurn", "finish_info", "is_final_turn", "parse_react_turn"]


class FinishInfo(NamedTuple):
    """A ``Finish`` call: return_type is "give_answer" or "give_up_and_restart" (or what the text says)."""

    return_type: str
    final_answer: str | None


# Recovery of the two Finish fields from an Action Input that is not valid JSON (cut short in the files).
_RETURN_TYPE_RE = re.compile(r'"return_type"\s*:\s*"([^"]*)"')
_FINAL_ANSWER_RE = re.compile(r'"final_answer"\s*:\s*"((?:[^"\\]|\\.)*)', re.S)


def parse_react_turn(text: str) -> ReactTurn:
    """Split a ReAct assistant turn into (thought, action, action_input): the one ReAct grammar of
    ``tools_env.parsers`` in its lenient mode.

    Tolerates what the published data contains: a missing ``Thought:`` (toolllama), an empty thought,
    a leading newline, end-of-turn tokens, pretty-printed or invalid JSON input (kept as text).
    """
    return split_react(text, "lenient")  # type: ignore[return-value]  (lenient always splits)


def finish_from_input(action_input: dict[str, Any] | str) -> FinishInfo:
    """The return type and answer of a ``Finish`` call's input (a decoded object, or its raw text)."""
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


def finish_of_arguments(arguments: str) -> FinishInfo:
    """The ``Finish`` fields of a stored call's argument text (annotation and prediction files)."""
    return finish_from_input(lenient_action_input(arguments))


def finish_info(turn: ReactTurn | str) -> FinishInfo | None:
    """The ``Finish`` call of a turn (return type and final answer), or None for a tool call.

    In the published data the final answer is ``Action: Finish`` with input
    ``{"return_type": "give_answer", "final_answer": "..."}`` (sometimes only ``final_answer``), or
    ``{"return_type": "give_up_and_restart"}``.
    """
    if isinstance(turn, str):
        turn = parse_react_turn(turn)
    if turn.action is None or turn.action.strip().lower() != REACT_FINISH.lower():
        return None
    return finish_from_input(turn.action_input)


def is_final_turn(text: str) -> bool:
    """True when the turn calls ``Finish`` (gives an answer or gives up)."""
    return finish_info(text) is not None
