"""Tool-call parsers: turn an assistant turn's text into tool calls or a final answer.

A registry so users add their own format without editing ours. Model output is the most hostile input
there is, so a parser never raises: a malformed call comes back as ``ParsedTurn(error=...)`` whose
message becomes the observation. Every registered parser is wrapped so that even a bug in it (or in a
user's parser) gives a parse error instead of crashing the rollout, and the JSON they read is bounded:
integers of more than ``sys.get_int_max_str_digits()`` digits, nesting deeper than ``MAX_JSON_DEPTH`` and
more than ``MAX_CALLS_PER_TURN`` calls are parse errors (the tool server applies the same limits).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

MAX_JSON_DEPTH = 32  # nesting of one call's arguments (objects and arrays); deeper is a parse error
MAX_CALLS_PER_TURN = 16  # tool calls in one turn; also the tool server's default per request


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


def _never_raises(name: str, fn: Parser) -> Parser:
    """``fn`` as a parser that turns any exception (a bug, a recursion limit) into a parse error."""

    @functools.wraps(fn)
    def parse(text: str) -> ParsedTurn:
        if not isinstance(text, str):
            return ParsedTurn(error=f"the {name} parser needs text, got {type(text).__name__}")
        try:
            turn = fn(text)
        except (Exception, RecursionError, MemoryError) as e:  # noqa: BLE001  (model output must not crash)
            return ParsedTurn(error=f"the {name} parser could not read this turn ({type(e).__name__})")
        if not isinstance(turn, ParsedTurn):
            return ParsedTurn(error=f"the {name} parser returned {type(turn).__name__}, not a ParsedTurn")
        if len(turn.calls) > MAX_CALLS_PER_TURN:
            return ParsedTurn(
                error=f"found {len(turn.calls)} tool calls; at most {MAX_CALLS_PER_TURN} per turn"
            )
        return turn

    return parse


def register_parser(name: str) -> Callable[[Parser], Parser]:
    """Register a parser under ``name``; the registered (and returned) function never raises."""

    def wrap(fn: Parser) -> Parser:
        if name in PARSERS:
            raise ValueError(f"parser {name!r} is already registered")
        safe = _never_raises(name, fn)
        PARSERS[name] = safe
        return safe

    return wrap


def get_parser(name: str) -> Parser:
    if name not in PARSERS:
        raise KeyError(f"unknown tool-call format {name!r}; known: {sorted(PARSERS)}")
    return PARSERS[name]


# ---- bounded JSON ---------------------------------------------------------------------------------
class JSONProblem(ValueError):
    """Text that is not JSON the tools may receive; ``str(e)`` says why in a few words."""


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        depth = max(depth, d + 1)
        stack.extend((child, d + 1) for child in node)
    return depth


def load_json(
    text: str, *, strict: bool = True, prefix: bool = False, max_depth: int = MAX_JSON_DEPTH
) -> tuple[Any, int]:
    """Decode JSON from ``text`` (``prefix``: a value at its start, the rest left): (value, end).

    Raises ``JSONProblem`` for invalid JSON, integers too long to convert, nesting deeper than
    ``max_depth`` and anything else the decoder trips on (e.g. its recursion limit).
    """
    decoder = json.JSONDecoder(strict=strict)
    try:
        value, end = decoder.raw_decode(text) if prefix else (decoder.decode(text), len(text))
    except json.JSONDecodeError as e:
        raise JSONProblem(f"{e.msg} at column {e.colno}") from None
    except RecursionError:
        raise JSONProblem(f"nested deeper than {max_depth} levels") from None
    except (ValueError, OverflowError, MemoryError) as e:  # e.g. an integer of 5000 digits
        raise JSONProblem(str(e).split(";")[0][:80] or type(e).__name__) from None
    if json_depth(value) > max_depth:
        raise JSONProblem(f"nested deeper than {max_depth} levels")
    return value, end


def _blocks(text: str, open_tag: str, close_tag: str) -> list[str] | str:
    """The bodies between ``open_tag`` and ``close_tag`` in order, or why the tags do not pair up.

    Linear in ``len(text)`` (a lazy regex is quadratic on many unclosed tags); nesting is an error.
    """
    bodies, pos = [], 0
    while True:
        start = text.find(open_tag, pos)
        stray = text.find(close_tag, pos)
        if start < 0:
            if stray >= 0:
                return f"found {close_tag} without an opening {open_tag}"
            return bodies
        if 0 <= stray < start:
            return f"found {close_tag} without an opening {open_tag}"
        body_start = start + len(open_tag)
        end = text.find(close_tag, body_start)
        if end < 0:
            return f"a {open_tag} is not closed by {close_tag}"
        nested = text.find(open_tag, body_start, end)
        if nested >= 0:
            return f"a {open_tag} is not closed by {close_tag} before the next {open_tag}"
        bodies.append(text[body_start:end])
        pos = end + len(close_tag)


_ANSWER = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.IGNORECASE)


def _final_answer(text: str) -> ParsedTurn:
    return ParsedTurn(final_answer=_ANSWER.sub("", text.strip(), count=1).strip())


@register_parser("hermes")
def parse_hermes(text: str) -> ParsedTurn:
    """Hermes/Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, several per turn.

    A turn with no ``<tool_call>`` is the final answer (an ``Answer:`` prefix is stripped).
    """
    bodies = _blocks(text, "<tool_call>", "</tool_call>")
    if isinstance(bodies, str):
        return ParsedTurn(error=bodies)
    if not bodies:
        return _final_answer(text)
    if len(bodies) > MAX_CALLS_PER_TURN:
        return ParsedTurn(error=f"found {len(bodies)} tool calls; at most {MAX_CALLS_PER_TURN} per turn")
    calls = []
    for i, body in enumerate(bodies):
        try:
            obj, _ = load_json(body.strip())
        except JSONProblem as e:
            return ParsedTurn(error=f"tool call {i + 1} is not valid JSON: {e}")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ParsedTurn(error=f'tool call {i + 1} must be an object with a string "name"')
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models emit arguments as a JSON string
            try:
                args, _ = load_json(args)
            except JSONProblem as e:
                return ParsedTurn(error=f"tool call {i + 1}: arguments is a string that is not JSON ({e})")
        calls.append(ToolCall(obj["name"], args))
    return ParsedTurn(calls=calls)


# ---- ReAct (ToolBench / StepTool) ----------------------------------------------------------------
# ``Thought: ...\nAction: <tool>\nAction Input: <json object>``; the answer is the ``Finish`` action with
# ``{"return_type": "give_answer", "final_answer": "..."}``. ``give_up_and_restart`` ends the episode
# with ``GIVE_UP_ANSWER`` as its final answer (no checker scores it as solved).
#
# One grammar, two modes. ``strict`` is what a policy is held to at rollout time: exactly one Action line,
# one Action Input after it holding one JSON value and nothing else (a hallucinated ``Observation:`` and
# what follows it are ignored). ``lenient`` reads what published trajectories contain: end-of-turn tokens,
# a missing Thought, several Action lines (the last one wins: a thought may quote an earlier one), input
# that is not JSON (kept as raw text), control characters inside JSON strings.

GIVE_UP_ANSWER = "[give_up_and_restart]"
REACT_FINISH = "Finish"
ReactMode = Literal["strict", "lenient"]
_REACT_THOUGHT = re.compile(r"^[ \t]*Thought[ \t]*:[ \t]?", re.MULTILINE)
_REACT_ACTION = re.compile(r"^[ \t]*Action[ \t]*:(.*)$", re.MULTILINE)
_REACT_INPUT = re.compile(r"^[ \t]*Action[ \t]+Input[ \t]*:[ \t]*", re.MULTILINE)
_REACT_OBSERVATION = re.compile(r"\n[ \t]*Observation[ \t]*:", re.IGNORECASE)
_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>")


class ReactTurn(NamedTuple):
    """A ReAct turn's parts: ``action`` is None when absent; ``action_input`` is the decoded JSON value
    (strict mode), or a dict when it decoded to an object and else the raw text (lenient mode)."""

    thought: str
    action: str | None
    action_input: Any


def _strip_end_tokens(text: str) -> str:
    body = text.rstrip()
    changed = True
    while changed:
        changed = False
        for tok in _END_TOKENS:
            if body.endswith(tok):
                body = body[: -len(tok)].rstrip()
                changed = True
    return body


def _react_thought(body: str, end: int) -> str:
    th = _REACT_THOUGHT.search(body, 0, end)
    return body[th.end() if th else 0 : end].strip()


def lenient_action_input(text: str) -> dict[str, Any] | str:
    """The lenient reading of an Action Input: a dict when it is a JSON object, else the raw text."""
    text = text.strip()
    try:
        value, _ = load_json(text, strict=False)
    except JSONProblem:
        return text
    return value if isinstance(value, dict) else text


def _split_react_lenient(text: str) -> ReactTurn:
    body = _strip_end_tokens(text)
    actions = list(_REACT_ACTION.finditer(body))
    act = actions[-1] if actions else None
    inp = _REACT_INPUT.search(body, act.end() if act else 0)
    thought_end = act.start() if act else (inp.start() if inp else len(body))
    thought = _react_thought(body, thought_end) if (act or inp) else body.strip()
    action = act.group(1).strip() if act else None
    action_input = lenient_action_input(body[inp.end() :]) if inp else ""
    return ReactTurn(thought, action or None, action_input)


def _split_react_strict(text: str) -> ReactTurn | str:
    text = _REACT_OBSERVATION.split(text, maxsplit=1)[0]
    actions = list(_REACT_ACTION.finditer(text))
    if not actions:
        return ("no 'Action:' line; call a tool with 'Action: <tool>' and 'Action Input: <json>', "
                "or answer with 'Action: Finish'")  # fmt: skip
    if len(actions) > 1:
        return f"found {len(actions)} 'Action:' lines; write exactly one action per turn"
    name = actions[0].group(1).strip()
    if not name:
        return "'Action:' names no tool"
    inputs = list(_REACT_INPUT.finditer(text))
    if len(inputs) != 1:
        return f"expected one 'Action Input:' line after 'Action: {name[:60]}', found {len(inputs)}"
    if inputs[0].start() < actions[0].start():
        return "'Action Input:' must come after 'Action:'"
    raw = text[inputs[0].end() :].strip()
    args: Any = {}
    if raw:
        try:
            args, end = load_json(raw, prefix=True)
        except JSONProblem as e:
            return f"Action Input of {name[:60]} is not valid JSON: {e}"
        if raw[end:].strip():
            return f"unexpected text after the Action Input JSON of {name[:60]}: {raw[end:].strip()[:40]!r}"
    return ReactTurn(_react_thought(text, actions[0].start()), name, args)


def split_react(text: str, mode: ReactMode = "strict") -> ReactTurn | str:
    """The ReAct grammar: a turn's (thought, action, action_input), or in strict mode why it is malformed.

    Lenient mode always returns a ``ReactTurn``; strict mode returns an error message instead when the
    turn breaks the format a policy is trained to (see the comment above for both modes).
    """
    if mode == "strict":
        return _split_react_strict(text)
    if mode == "lenient":
        return _split_react_lenient(text)
    raise ValueError(f"ReAct mode must be 'strict' or 'lenient', got {mode!r}")


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


def _react_turn(parts: ReactTurn | str) -> ParsedTurn:
    if isinstance(parts, str):
        return ParsedTurn(error=parts)
    if parts.action is None:
        return ParsedTurn(error="no 'Action:' line; call a tool with 'Action: <tool>' and 'Action Input: "
                          "<json>', or answer with 'Action: Finish'")  # fmt: skip
    name, args = parts.action, parts.action_input
    if name == REACT_FINISH:
        return _react_finish(args)
    if not isinstance(args, dict):
        kind = "text that is not JSON" if isinstance(args, str) else type(args).__name__
        return ParsedTurn(error=f"Action Input of {name[:60]} must be a JSON object, got {kind}")
    return ParsedTurn(calls=[ToolCall(name, args)])


@register_parser("react")
def parse_react(text: str) -> ParsedTurn:
    """ToolBench/StepTool ReAct in strict mode: one ``Action:``/``Action Input:`` pair; ``Finish`` answers.

    A hallucinated ``Observation:`` after the Action Input is ignored (generation should stop there).
    """
    return _react_turn(split_react(text, "strict"))


@register_parser("react_lenient")
def parse_react_lenient(text: str) -> ParsedTurn:
    """ReAct in lenient mode (as published trajectories are read): the last Action wins, end tokens go."""
    parts = split_react(text, "lenient")
    if isinstance(parts, ReactTurn) and parts.action is not None and parts.action_input == "":
        parts = parts._replace(action_input={})  # an empty Action Input, as in strict mode
    return _react_turn(parts)


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
    if json_depth(args) > MAX_JSON_DEPTH:
        return f"call {index} {name}(...): arguments nested deeper than {MAX_JSON_DEPTH} levels"
    return ToolCall(name, args)


@register_parser("pycall")
def parse_pycall(text: str) -> ParsedTurn:
    """Python call syntax, one call per line: ``search(query="x", k=3)``; literals only, parsed with ast.

    Lines that do not start with ``name(`` are thoughts and ignored; a turn with no call is the final
    answer (an ``Answer:`` prefix is stripped). Nothing is evaluated.
    """
    lines = [ln for ln in text.splitlines() if _PYCALL_LINE.match(ln)]
    if not lines:
        return _final_answer(text)
    if len(lines) > MAX_CALLS_PER_TURN:
        return ParsedTurn(error=f"found {len(lines)} tool calls; at most {MAX_CALLS_PER_TURN} per turn")
    calls = []
    for i, line in enumerate(lines, start=1):
        parsed = _parse_call_line(line, i)
        if isinstance(parsed, str):
            return ParsedTurn(error=parsed)
        calls.append(parsed)
    return ParsedTurn(calls=calls)


# ---- ARPO tags ----------------------------------------------------------------------------------
_TAG_TOOLS = {"python": "code", "search": "query"}  # tag -> (tool name = tag, argument name)
_TAG_OPEN = re.compile(r"<(python|search|answer)>")


def _tag_blocks(text: str) -> list[tuple[str, str]] | str:
    """(tag, body) of each ``<tag>body</tag>`` in order (a tag inside another's body is its content)."""
    found, pos = [], 0
    while m := _TAG_OPEN.search(text, pos):
        close = f"</{m.group(1)}>"
        end = text.find(close, m.end())
        if end < 0:
            return f"<{m.group(1)}> is not closed by {close}"
        found.append((m.group(1), text[m.end() : end]))
        pos = end + len(close)
    return found


def _unfence(body: str) -> str:
    """The code inside a Markdown fence (```lang ... ```), or ``body`` when it is not fenced."""
    inner = body.strip()
    if not (inner.startswith("```") and inner.endswith("```") and len(inner) >= 6):
        return body
    first_newline = inner.find("\n")
    if first_newline < 0 or not re.fullmatch(r"```[\w+-]*[ \t]*", inner[:first_newline]):
        return body
    return inner[first_newline + 1 : -3].rstrip()


@register_parser("tags")
def parse_tags(text: str) -> ParsedTurn:
    """ARPO style: ``<python>code</python>`` / ``<search>query</search>`` call a tool, ``<answer>`` answers.

    Tool outputs go back wrapped as ``<result>...</result>`` (see ``format_observation``). A turn must
    either call tools or answer, not both; text outside the tags (``<think>``) is ignored.
    """
    for tag in ("python", "search", "answer"):
        if text.count(f"<{tag}>") != text.count(f"</{tag}>"):
            return ParsedTurn(error=f"<{tag}> is not closed by </{tag}> (or a closing tag has no opening)")
    found = _tag_blocks(text)
    if isinstance(found, str):
        return ParsedTurn(error=found)
    answers = [body for tag, body in found if tag == "answer"]
    calls = []
    for tag, body in found:
        if tag in _TAG_TOOLS:
            body = _unfence(body.strip())
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
_CODE_OPEN = re.compile(r"```(?:python|py)[ \t]*\n")


@register_parser("codestep")
def parse_codestep(text: str) -> ParsedTurn:
    """CodeTool: each fenced ```python block is one code step, run by the ``python`` tool.

    A turn without a python block is the final answer (an ``Answer:`` prefix is stripped).
    """
    opened = len(_CODE_OPEN.findall(text))
    blocks, pos = [], 0
    while m := _CODE_OPEN.search(text, pos):
        end = text.find("```", m.end())
        if end < 0:
            break
        blocks.append(text[m.end() : end])
        pos = end + 3
    if opened != len(blocks):
        return ParsedTurn(error="a ```python block is not closed by ```")
    if not blocks:
        return _final_answer(text)
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
