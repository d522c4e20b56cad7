"""Tool-call parsers: react, pycall, tags, codestep (plus the published ToolBench/StepTool conformance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools_env.parsers import (
    GIVE_UP_ANSWER,
    PARSERS,
    ToolCall,
    format_observation,
    get_parser,
    uses_text_observations,
)

STEPTOOL_SFT = (
    Path(__file__).resolve().parents[2]
    / "shared/data/steptool/data_train/qwen2/gpt4_dfs_G123_for_sft_example.json"
)


def test_all_formats_registered():
    assert {"hermes", "react", "pycall", "tags", "codestep"} <= set(PARSERS)


# ---- react --------------------------------------------------------------------------------------
react = get_parser("react")


def test_react_call():
    turn = react(
        'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Oslo", "days": 2}'
    )
    assert turn.calls == [ToolCall("get_weather", {"city": "Oslo", "days": 2})] and turn.error is None


def test_react_multiline_json_and_empty_input():
    turn = react('Thought: x\nAction: search\nAction Input: {\n  "q": "a b"\n}\n')
    assert turn.calls == [ToolCall("search", {"q": "a b"})]
    assert react("Thought: x\nAction: list_all\nAction Input: {}").calls == [ToolCall("list_all", {})]
    assert react("Thought: x\nAction: list_all\nAction Input:").calls == [ToolCall("list_all", {})]


def test_react_finish_give_answer_and_give_up():
    text = 'Thought: done\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "It is 42."}'
    turn = react(text)
    assert turn.is_final and turn.final_answer == "It is 42."
    order_swapped = 'Action: Finish\nAction Input: {"final_answer": "x", "return_type": "give_answer"}'
    assert react(order_swapped).final_answer == "x"
    give_up = react('Thought: stuck\nAction: Finish\nAction Input: {"return_type": "give_up_and_restart"}')
    assert give_up.is_final and give_up.final_answer == GIVE_UP_ANSWER


def test_react_ignores_hallucinated_observation():
    turn = react('Action: f\nAction Input: {"a": 1}\nObservation: {"result": 3}\nThought: more')
    assert turn.calls == [ToolCall("f", {"a": 1})]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("I think the answer is 4.", "no 'Action:' line"),
        ("Action: f\nAction Input: {}\nAction: g\nAction Input: {}", "2 'Action:' lines"),
        ("Action: f\n", "expected one 'Action Input:'"),
        ('Action: f\nAction Input: {"a": 1', "not valid JSON"),
        ('Action: f\nAction Input: {"a": 1} and more', "unexpected text after"),
        ("Action: f\nAction Input: [1, 2]", "must be a JSON object"),
        ('Action: Finish\nAction Input: {"final_answer": "x"}', "return_type"),
        ('Action: Finish\nAction Input: {"return_type": "give_answer"}', "final_answer"),
        ("Action Input: {}\nAction: f", "must come after"),
        ("Action:\nAction Input: {}", "names no tool"),
    ],
)
def test_react_errors_are_precise(text: str, fragment: str):
    turn = react(text)
    assert turn.error and fragment in turn.error and not turn.calls and turn.final_answer is None


@pytest.mark.skipif(not STEPTOOL_SFT.exists(), reason="published StepTool examples not available")
def test_react_reads_every_published_steptool_turn():
    """Conformance: every assistant turn of the published SFT example parses; Finish turns are answers."""
    data = json.loads(STEPTOOL_SFT.read_text())
    turns = finals = 0
    for item in data.values():
        for instance in item["instances"]:
            for conv in instance["conversations"]:
                if conv["from"] != "assistant":
                    continue
                turn = react(conv["value"])
                assert turn.error is None, (conv["value"][-300:], turn.error)
                turns += 1
                if "Action: Finish" in conv["value"]:
                    assert turn.is_final and turn.final_answer and turn.final_answer != GIVE_UP_ANSWER
                    finals += 1
                else:
                    assert len(turn.calls) == 1 and isinstance(turn.calls[0].arguments, dict)
    assert turns > 10 and finals > 0


# ---- pycall -------------------------------------------------------------------------------------
pycall = get_parser("pycall")


def test_pycall_several_calls_with_thoughts():
    text = 'I will look both up.\nlookup(country="Oskaria", field="area")\nweather(city="Velport", days=-2)\n'
    turn = pycall(text)
    assert turn.calls == [
        ToolCall("lookup", {"country": "Oskaria", "field": "area"}),
        ToolCall("weather", {"city": "Velport", "days": -2}),
    ]


def test_pycall_literals_become_json():
    turn = pycall('f(a=(1, 2), b={"k": [None, True, 1.5]}, c="x")')
    assert turn.calls[0].arguments == {"a": [1, 2], "b": {"k": [None, True, 1.5]}, "c": "x"}


def test_pycall_no_call_is_final_answer():
    turn = pycall("Answer: the total is 57.")
    assert turn.is_final and turn.final_answer == "the total is 57."


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('f(a=__import__("os").system("x"))', "is not a literal"),
        ("f(a=x)", "is not a literal"),
        ("f(a={1, 2})", "is not a literal"),
        ("f(1)", "pass arguments by name"),
        ("f(a=1", "not valid Python"),
        ("f(**{'a': 1})", "**kwargs"),
        ("f(a=1, a=2)", "given twice"),
        ("f(a=1) + g(b=2)", "not a single function call"),
        ("f(a={1: 2})", "keys must be strings"),
    ],
)
def test_pycall_errors_never_evaluate(text: str, fragment: str):
    turn = pycall(text)
    assert turn.error and fragment in turn.error and not turn.calls


# ---- tags ---------------------------------------------------------------------------------------
tags = get_parser("tags")


def test_tags_python_and_search():
    turn = tags("<think>compute</think>\n<python>\nprint(6 * 7)\n</python>")
    assert turn.calls == [ToolCall("python", {"code": "print(6 * 7)"})]
    turn = tags("<search> capital of Oskaria </search>")
    assert turn.calls == [ToolCall("search", {"query": "capital of Oskaria"})]
    fenced = tags("<python>\n```python\nx = 1\nprint(x)\n```\n</python>")
    assert fenced.calls == [ToolCall("python", {"code": "x = 1\nprint(x)"})]


def test_tags_answer_is_final():
    turn = tags("<think>done</think><answer> Velport </answer>")
    assert turn.is_final and turn.final_answer == "Velport"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<python>print(1)", "not closed"),
        ("<search>q</search><answer>a</answer>", "not both"),
        ("<answer>a</answer><answer>b</answer>", "one answer"),
        ("just text", "no <python>, <search> or <answer>"),
        ("<python>  </python>", "empty"),
    ],
)
def test_tags_errors(text: str, fragment: str):
    turn = tags(text)
    assert turn.error and fragment in turn.error


# ---- codestep -----------------------------------------------------------------------------------
codestep = get_parser("codestep")


def test_codestep_block_is_one_step():
    turn = codestep("First compute the total.\n```python\ntotal = 17 * 23\nprint(total)\n```\n")
    assert turn.calls == [ToolCall("python", {"code": "total = 17 * 23\nprint(total)\n"})]


def test_codestep_without_code_is_final_and_other_fences_are_text():
    turn = codestep("The answer is 391.\n```text\nnot code\n```")
    assert turn.is_final and turn.final_answer.startswith("The answer is 391.")


def test_codestep_errors():
    assert "not closed" in codestep("```python\nprint(1)\n").error
    assert "empty" in codestep("```python\n```").error


# ---- observations -------------------------------------------------------------------------------
def test_format_observation():
    assert format_observation("tags", ["42"]) == "<result>\n42\n</result>"
    assert format_observation("tags", ["a", "b"]) == "<result>\na\n</result><result>\nb\n</result>"
    assert format_observation("codestep", ["391"]) == "```output\n391\n```\n"
    assert uses_text_observations("tags") and not uses_text_observations("hermes")
    with pytest.raises(ValueError, match="role 'tool'"):
        format_observation("hermes", ["x"])
    with pytest.raises(KeyError):
        format_observation("nope", ["x"])


@pytest.mark.parametrize("name", ["react", "pycall", "tags", "codestep", "hermes"])
@pytest.mark.parametrize(
    "text", ["", "\x00\x01", "<" * 5000, "Action: " + "(" * 3000, "f(" + "[" * 3000 + ")"]
)
def test_garbage_never_raises(name: str, text: str):
    get_parser(name)(text)
