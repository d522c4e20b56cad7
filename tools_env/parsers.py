"""Tool-call parsers: turn an assistant turn's text into tool calls or a final answer.

A registry so users add their own format without editing ours. A malformed call never raises:
it comes back as ``ParsedTurn(error=...)`` whose message becomes the observation.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: Any


@dataclass
class ParsedTurn:
    """What one assistant turn asked for: tool calls, a final answer, or a parse error."""

    calls: list[ToolCall] = field(default_factory=list)
    final_answer: str | None = None
    error: str | None = None

    @property
    def is_final(self) -> bool:
        return self.final_answer is not None and not self.calls and self.error is None


Parser = Callable[[str], ParsedTurn]
PARSERS: dict[str, Parser] = {}


def register_parser(name: str) -> Callable[[Parser], Parser]:
    def wrap(fn: Parser) -> Parser:
        if name in PARSERS:
            raise ValueError(f"parser {name!r} is already registered")
        PARSERS[name] = fn
        return fn

    return wrap


def get_parser(name: str) -> Parser:
    if name not in PARSERS:
        raise KeyError(f"unknown tool-call format {name!r}; known: {sorted(PARSERS)}")
    return PARSERS[name]


_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANSWER = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.IGNORECASE)


@register_parser("hermes")
def parse_hermes(text: str) -> ParsedTurn:
    """Hermes/Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, several per turn.

    A turn with no ``<tool_call>`` is the final answer (an ``Answer:`` prefix is stripped).
    """
    if "<tool_call>" not in text:
        if "</tool_call>" in text:
            return ParsedTurn(error="found </tool_call> without an opening <tool_call>")
        return ParsedTurn(final_answer=_ANSWER.sub("", text.strip()).strip())
    bodies = _HERMES.findall(text)
    if text.count("<tool_call>") != len(bodies):
        return ParsedTurn(error="a <tool_call> is not closed by </tool_call>")
    calls = []
    for i, body in enumerate(bodies):
        try:
            obj = json.loads(body.strip())
        except json.JSONDecodeError as e:
            return ParsedTurn(error=f"tool call {i + 1} is not valid JSON: {e.msg} at column {e.colno}")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ParsedTurn(error=f'tool call {i + 1} must be an object with a string "name"')
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models emit arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return ParsedTurn(error=f"tool call {i + 1}: arguments is a string that is not JSON")
        calls.append(ToolCall(obj["name"], args))
    return ParsedTurn(calls=calls)


# ---- ReAct (ToolBench / StepTool) ----------------------------------------------------------------
# ``Thought: ...\nAction: <tool>\nAction Input: <json object>``; the answer is the ``Finish`` action with
# ``{"return_type": "give_answer", "final_answer": "..."}``. ``give_up_and_restart`` ends the episode
# with ``GIVE_UP_ANSWER`` as its final answer (no checker scores it as solved).

GIVE_UP_ANSWER = "[give_up_and_restart]"
REACT_FINISH = "Finish"
_REACT_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_REACT_INPUT = re.compile(r"^[ \t]*Action[ \t]+Input[ \t]*:", re.MULTILINE)
_REACT_OBSERVATION = re.compile(r"\n[ \t]*Observation[ \t]*:", re.IGNORECASE)


def _react_finish(args: Any) -> ParsedTurn:
    if not isinstance(args, dict):
        return ParsedTurn(error="Action Input of Finish must be a JSON object")
    kind = args.get("return_type")
    if kind == "give_up_and_restart":
        return ParsedTurn(final_answer=GIVE_UP_ANSWER)
    if kind != "give_answer":
        return ParsedTurn(error='Finish needs "return_type": "give_answer" or "give_up_and_restart"')
    answer = args.get("final_answer")
    if not isinstance(answer, str):
        return ParsedTurn(error='Finish with "give_answer" needs a string "final_answer"')
    return ParsedTurn(final_answer=answer)


@register_parser("react")
def parse_react(text: str) -> ParsedTurn:
    """ToolBench/StepTool ReAct: one ``Action:``/``Action Input:`` pair per turn; ``Finish`` answers.

    A hallucinated ``Observation:`` after the Action Input is ignored (generation should stop there).
    """
    text = _REACT_OBSERVATION.split(text, maxsplit=1)[0]
    actions = _REACT_ACTION.findall(text)
    if not actions:
        return ParsedTurn(error="no 'Action:' line; call a tool with 'Action: <tool>' and 'Action Input: "
                          "<json>', or answer with 'Action: Finish'")  # fmt: skip
    if len(actions) > 1:
        return ParsedTurn(error=f"found {len(actions)} 'Action:' lines; write exactly one action per turn")
    name = actions[0]
    if not name:
        return ParsedTurn(error="'Action:' names no tool")
    inputs = list(_REACT_INPUT.finditer(text))
    if len(inputs) != 1:
        return ParsedTurn(
            error=f"expected one 'Action Input:' line after 'Action: {name}', found {len(inputs)}"
        )
    if inputs[0].start() < _REACT_ACTION.search(text).start():
        return ParsedTurn(error="'Action Input:' must come after 'Action:'")
    raw = text[inputs[0].end() :].strip()
    if not raw:
        args: Any = {}
    else:
        try:
            args, end = json.JSONDecoder().raw_decode(raw)
        except json.JSONDecodeError as e:
            return ParsedTurn(error=f"Action Input of {name} is not valid JSON: {e.msg} at column {e.colno}")
        if raw[end:].strip():
            return ParsedTurn(
                error=f"unexpected text after the Action Input JSON of {name}: {raw[end:].strip()[:40]!r}"
            )
    if name == REACT_FINISH:
        return _react_finish(args)
    if not isinstance(args, dict):
        return ParsedTurn(error=f"Action Input of {name} must be a JSON object, got {type(args).__name__}")
    return ParsedTurn(calls=[ToolCall(name, args)])


# ---- Python call syntax ----------------------------------------------------------------------------
_PYCALL_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*\(")


def _call_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _call_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _literal(node: ast.expr) -> Any:
    """A JSON-like literal: tuples become lists; sets, names and anything computed are refused."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, bool | int | float | str)
    ):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(x) for x in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            key = _literal(k) if k is not None else None
            if not isinstance(key, str):
                raise ValueError("dictionary keys must be strings")
            out[key] = _literal(v)
        return out
    raise ValueError(
        f"`{ast.unparse(node)[:40]}` is not a literal (number, string, list, dict, True/False/None)"
    )


def _parse_call_line(line: str, index: int) -> ToolCall | str:
    try:
        tree = ast.parse(line.strip(), mode="eval")
    except SyntaxError as e:
        return f"call {index} `{line.strip()[:60]}` is not valid Python: {e.msg}"
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return f"call {index} cannot be parsed: {type(e).__name__}"
    call = tree.body
    if not isinstance(call, ast.Call):
        return f"call {index} `{line.strip()[:60]}` is not a single function call"
    name = _call_name(call.func)
    if name is None:
        return f"call {index}: the function must be a plain name like search(...)"
    if call.args:
        return f"call {index} {name}(...): pass arguments by name, e.g. {name}(x=1)"
    args: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            return f"call {index} {name}(...): **kwargs is not allowed"
        if kw.arg in args:
            return f"call {index} {name}(...): argument {kw.arg!r} is given twice"
        try:
            args[kw.arg] = _literal(kw.value)
        except (ValueError, RecursionError) as e:
            return f"call {index} {name}(...): argument {kw.arg!r}: {e}"
    return ToolCall(name, args)


@register_parser("pycall")
def parse_pycall(text: str) -> ParsedTurn:
    """Python call syntax, one call per line: ``search(query="x", k=3)``; literals only, parsed with ast.

    Lines that do not start with ``name(`` are thoughts and ignored; a turn with no call is the final
    answer (an ``Answer:`` prefix is stripped). Nothing is evaluated.
    """
    lines = [ln for ln in text.splitlines() if _PYCALL_LINE.match(ln)]
    if not lines:
        return ParsedTurn(final_answer=_ANSWER.sub("", text.strip()).strip())
    calls = []
    for i, line in enumerate(lines, start=1):
        parsed = _parse_call_line(line, i)
        if isinstance(parsed, str):
            return ParsedTurn(error=parsed)
        calls.append(parsed)
    return ParsedTurn(calls=calls)


# ---- ARPO tags ----------------------------------------------------------------------------------
_TAG_TOOLS = {"python": "code", "search": "query"}  # tag -> (tool name = tag, argument name)
_TAG = re.compile(r"<(python|search|answer)>(.*?)</\1>", re.DOTALL)
_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


@register_parser("tags")
def parse_tags(text: str) -> ParsedTurn:
    """ARPO style: ``<python>code</python>`` / ``<search>query</search>`` call a tool, ``<answer>`` answers.

    Tool outputs go back wrapped as ``<result>...</result>`` (see ``format_observation``). A turn must
    either call tools or answer, not both; text outside the tags (``<think>``) is ignored.
    """
    for tag in ("python", "search", "answer"):
        if text.count(f"<{tag}>") != text.count(f"</{tag}>"):
            return ParsedTurn(error=f"<{tag}> is not closed by </{tag}> (or a closing tag has no opening)")
    found = _TAG.findall(text)
    answers = [body for tag, body in found if tag == "answer"]
    calls = []
    for tag, body in found:
        if tag in _TAG_TOOLS:
            body = body.strip()
            fenced = _FENCE.match(body)
            if fenced:
                body = fenced.group(1)
            if not body.strip():
                return ParsedTurn(error=f"<{tag}></{tag}> is empty")
            calls.append(ToolCall(tag, {_TAG_TOOLS[tag]: body}))
    if calls and answers:
        return ParsedTurn(error="a turn must either call a tool or give an <answer>, not both")
    if len(answers) > 1:
        return ParsedTurn(error=f"found {len(answers)} <answer> tags; give one answer")
    if answers:
        return ParsedTurn(final_answer=answers[0].strip())
    if calls:
        return ParsedTurn(calls=calls)
    return ParsedTurn(error="no <python>, <search> or <answer> tag: call a tool or give <answer>...</answer>")


# ---- CodeTool code steps ------------------------------------------------------------------------
_CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


@register_parser("codestep")
def parse_codestep(text: str) -> ParsedTurn:
    """CodeTool: each fenced ```python block is one code step, run by the ``python`` tool.

    A turn without a python block is the final answer (an ``Answer:`` prefix is stripped).
    """
    opened = len(re.findall(r"```(?:python|py)[ \t]*\n", text))
    blocks = _CODE_BLOCK.findall(text)
    if opened != len(blocks):
        return ParsedTurn(error="a ```python block is not closed by ```")
    if not blocks:
        return ParsedTurn(final_answer=_ANSWER.sub("", text.strip()).strip())
    if any(not b.strip() for b in blocks):
        return ParsedTurn(error="a ```python block is empty")
    return ParsedTurn(calls=[ToolCall("python", {"code": b}) for b in blocks])


# ---- observations -------------------------------------------------------------------------------
# Chat-template formats (hermes, react, pycall) return tool results as role "tool" messages rendered by
# the tokenizer's chat template, so they have no entry here. Formats whose results continue the
# assistant's own text need the environment to wrap them:
ObservationFormatter = Callable[[list[str]], str]
OBSERVATION_FORMATS: dict[str, ObservationFormatter] = {
    "tags": lambda outputs: "".join(f"<result>\n{o}\n</result>" for o in outputs),
    "codestep": lambda outputs: "".join(f"```output\n{o}\n```\n" for o in outputs),
}


def uses_text_observations(format_name: str) -> bool:
    """True when tool results go back as text appended to the turn, False for role "tool" messages."""
    return format_name in OBSERVATION_FORMATS


def format_observation(format_name: str, outputs: list[str]) -> str:
    """The text the environment appends after a turn in ``format_name`` (one block per tool output)."""
    if format_name not in OBSERVATION_FORMATS:
        if format_name in PARSERS:
            raise ValueError(f"format {format_name!r} returns tool results as role 'tool' chat messages, "
                             "not as text; see uses_text_observations()")  # fmt: skip
        raise KeyError(f"unknown tool-call format {format_name!r}; known: {sorted(PARSERS)}")
    return OBSERVATION_FORMATS[format_name](list(outputs))
