"""Hostile model output never crashes a rollout: every parser returns a ParsedTurn for any text.

The fixed cases are the reproductions of issue 14 (finding 3); the property tests fuzz each parser
with arbitrary text and with text built from its own syntax (so the fuzzer reaches deep branches).
The raw implementations are fuzzed (``__wrapped__``), not only the never-raise wrapper around them,
so a parser bug shows up here instead of hiding behind the wrapper. Budget: see fuzz_profiles.py.
"""

from __future__ import annotations

import json
import time

import pytest
from fuzz_profiles import FUZZ
from hypothesis import given
from hypothesis import strategies as st

from steprl.data import parse_react_turn
from steprl.episode import parse_safely
from tools_env.parsers import (
    MAX_CALLS_PER_TURN,
    MAX_JSON_DEPTH,
    PARSERS,
    ParsedTurn,
    ReactTurn,
    ToolCall,
    get_parser,
    json_depth,
    split_react,
)

BUILTIN = ["hermes", "react", "react_lenient", "pycall", "tags", "codestep"]
DIGITS = "1" * 5000
HOSTILE = {
    "long_int_hermes": '<tool_call>{"name":"x","arguments":{"n":' + DIGITS + "}}</tool_call>",
    "long_int_react": 'Action: x\nAction Input: {"n": ' + DIGITS + "}",
    "long_int_pycall": f"x(n={DIGITS})",
    "deep_json_hermes": "<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>",
    "deep_json_react": "Action: x\nAction Input: " + '{"a":' * 100_000 + "1" + "}" * 100_000,
    "deep_args_hermes": '<tool_call>{"name":"x","arguments":'
    + '{"a":' * 40
    + "1"
    + "}" * 41
    + "</tool_call>",
    "lone_surrogates": '<tool_call>{"name":"\ud800","arguments":{"q":"\udfff"}}</tool_call>\ud800',
    "nul_bytes": 'Action: x\x00\nAction Input: {"a": "\x00"}\nx(a=\'\x00\')\n<python>\x00</python>',
    "huge": "Thought: " + "blah " * 400_000,
    "many_unclosed_tags": "<tool_call><python>```python\n" * 50_000,
    "spaces_after_action": "Action:" + " " * 200_000 + "x",
    "fence_whitespace": "<python>```\n" + " \n" * 200_000 + "</python>",
    "many_calls": "".join(f'<tool_call>{{"name":"f{i}","arguments":{{}}}}</tool_call>' for i in range(40)),
}


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_output_becomes_a_parse_error_or_a_bounded_turn(name: str, case: str) -> None:
    start = time.perf_counter()
    turn = PARSERS[name].__wrapped__(HOSTILE[case])  # the raw parser: no exception may escape it
    assert isinstance(turn, ParsedTurn)
    assert time.perf_counter() - start < 5.0, "linear-time parsing (no quadratic regex)"
    assert len(turn.calls) <= MAX_CALLS_PER_TURN or name not in ("hermes", "pycall")
    assert all(json_depth(c.arguments) <= MAX_JSON_DEPTH for c in turn.calls)
    assert isinstance(get_parser(name)(HOSTILE[case]), ParsedTurn)


def test_the_reproductions_of_the_issue_are_clear_parse_errors() -> None:
    hermes = get_parser("hermes")
    assert "not valid JSON" in hermes(HOSTILE["long_int_hermes"]).error
    assert "nested deeper" in hermes(HOSTILE["deep_json_hermes"]).error
    assert "nested deeper" in hermes(HOSTILE["deep_args_hermes"]).error
    assert "at most 16" in hermes(HOSTILE["many_calls"]).error
    surrogate = hermes(HOSTILE["lone_surrogates"])
    assert surrogate.calls == [ToolCall("\ud800", {"q": "\udfff"})]  # as the model wrote it


def test_a_raising_parser_is_a_parse_error_in_the_episode_loop() -> None:
    def broken(text: str) -> ParsedTurn:
        raise RecursionError("boom")

    assert parse_safely(broken, "x").error == "the tool-call parser failed on this turn (RecursionError)"
    assert "not a ParsedTurn" in parse_safely(lambda t: None, "x").error
    assert parse_safely(get_parser("hermes"), "Answer: 4").final_answer == "4"


def test_registered_parsers_are_wrapped_against_their_own_bugs() -> None:
    from tools_env.parsers import register_parser

    @register_parser("_fuzz_buggy")
    def buggy(text: str) -> ParsedTurn:
        return ParsedTurn(calls=[ToolCall("f", {})]) if text else 1 / 0

    try:
        assert get_parser("_fuzz_buggy")("").error.endswith("(ZeroDivisionError)")
        assert get_parser("_fuzz_buggy")(None).error.startswith("the _fuzz_buggy parser needs text")
    finally:
        del PARSERS["_fuzz_buggy"]


# ---- one ReAct grammar ---------------------------------------------------------------------------
def test_react_modes_are_one_grammar() -> None:
    clean = 'Thought: look it up\nAction: lookup\nAction Input: {"country": "Oskaria"}'
    assert split_react(clean, "strict") == split_react(clean, "lenient") == parse_react_turn(clean)
    assert split_react(clean, "strict") == ReactTurn("look it up", "lookup", {"country": "Oskaria"})
    published = 'Thought: x\nAction: try\nAction: lookup\nAction Input: {"a": "line\nbreak"}<|im_end|>'
    assert split_react(published, "lenient") == ReactTurn("x\nAction: try", "lookup", {"a": "line\nbreak"})
    assert "2 'Action:' lines" in split_react(published, "strict")
    assert get_parser("react_lenient")(published).calls == [ToolCall("lookup", {"a": "line\nbreak"})]
    assert get_parser("react")(published).error
    with pytest.raises(ValueError, match="strict' or 'lenient"):
        split_react(clean, "loose")


# ---- properties ----------------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=20,
)
_fragments = st.sampled_from([
    "<tool_call>", "</tool_call>", "Thought:", "Action:", "Action Input:", "\nObservation:", "Finish",
    "<python>", "</python>", "<search>", "</search>", "<answer>", "</answer>", "```python\n", "```",
    '{"name": "f", "arguments": ', '"return_type": "give_answer"', "{", "}", "[", "]", '"', "\\", "\n",
    "f(", ")", "x=", "1e999", "NaN", "\x00", "\ud800", "<|im_end|>", "Answer:", " ",
])  # fmt: skip
_structured = st.lists(_fragments | st.text(max_size=6) | _json.map(json.dumps), max_size=30).map("".join)


@FUZZ
@given(text=st.text(max_size=2000) | _structured, name=st.sampled_from(BUILTIN))
def test_any_text_gives_a_parsed_turn(text: str, name: str) -> None:
    turn = PARSERS[name].__wrapped__(text)
    assert isinstance(turn, ParsedTurn)
    assert turn.error is None or isinstance(turn.error, str)
    assert all(isinstance(c, ToolCall) and isinstance(c.name, str) for c in turn.calls)
    assert all(json_depth(c.arguments) <= MAX_JSON_DEPTH for c in turn.calls)


@FUZZ
@given(text=st.text(max_size=2000) | _structured)
def test_lenient_react_always_splits(text: str) -> None:
    parts = parse_react_turn(text)
    assert isinstance(parts, ReactTurn) and isinstance(parts.thought, str)
    strict = split_react(text, "strict")
    assert isinstance(strict, ReactTurn | str)
    if isinstance(strict, ReactTurn) and "<|" not in text and "Observation" not in text:
        assert parts.action == strict.action  # a turn strict mode accepts reads the same leniently


@FUZZ
@given(args=st.dictionaries(st.text(max_size=8), _json, max_size=4), name=st.text(min_size=1, max_size=12))
def test_well_formed_calls_round_trip(args: dict, name: str) -> None:
    body = json.dumps({"name": name, "arguments": args})
    turn = get_parser("hermes")(f"<tool_call>{body}</tool_call>")
    if "<tool_call>" in body or "</tool_call>" in body:
        return
    assert turn.error is None and len(turn.calls) == 1
    assert json.dumps(turn.calls[0].arguments) == json.dumps(args)  # NaN != NaN, its JSON text is equal
