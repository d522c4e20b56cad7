"""Readers for the StepTool data formats.

Fixtures are invented here (a toy weather tool) in the published layouts; the conformance tests at
the end read the published example files from ../shared/data/steptool (or $STEPTOOL_DATA_DIR) and
are skipped only when that directory is absent.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from steprl.data import (
    ChatTemplateError,
    DataFormatError,
    FinishInfo,
    finish_info,
    is_final_turn,
    parse_react_turn,
    read_eto_pairs_csv,
    read_predictions,
    read_reward_annotations,
    read_rft_json,
    read_sft_json,
    read_steptool_ppo_csv,
    to_messages,
    tokenize_offline_trajectory,
)
from steprl.protocol import collate

# ------------------------------------------------------------------------------------------------
# Invented fixture content
# ------------------------------------------------------------------------------------------------

SYSTEM = "Specifically, you have access to the following APIs: ['get_weather', 'Finish']"
USER = "\nWhat is the weather in Paris today?\nBegin!\n"
TURN0 = 'Thought: I should look up the weather first.\nAction: get_weather\nAction Input: {"city": "Paris"}'
OBS0 = '{"error": "", "response": {"temp_c": 21, "sky": "sunny"}}'
TURN1 = (
    "Thought: \nAction: Finish\nAction Input: "
    '{"return_type": "give_answer", "final_answer": "It is 21 C and sunny in Paris."}'
)
REWARDS = [1.0, 0.5]


def render_ppo_cells(fmt: str, turns: list[str], obs: list[str]) -> tuple[list[str], list[str]]:
    """The prompt/response lists of one PPO CSV row in the given chat format."""
    if fmt == "qwen2":
        head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n"
        seg = "<|im_start|>function\n{}<|im_end|>\n<|im_start|>assistant\n"
        end = "<|im_end|>\n"
    elif fmt == "llama3":
        h = "<|start_header_id|>{}<|end_header_id|>\n\n"
        head = (
            f"{h.format('system')}{SYSTEM}<|eot_id|>{h.format('user')}{USER}<|eot_id|>{h.format('assistant')}"
        )
        seg = h.format("function") + "{}<|eot_id|>" + h.format("assistant")
        end = "<|eot_id|>"
    else:
        head = f"System:\n{SYSTEM}\nUser:\n{USER}\nAssistant:\n"
        seg = "Function:\n{}\nAssistant:\n"
        end = "\n"
    return [head] + [seg.format(o) for o in obs], [t + end for t in turns]


def ppo_line(fmt: str, turns=(TURN0, TURN1), obs=(OBS0,), rewards=REWARDS) -> str:
    prompts, responses = render_ppo_cells(fmt, list(turns), list(obs))
    return ppo_raw_line(repr(prompts), repr(responses), repr(list(rewards)))


def ppo_raw_line(*cells: str) -> str:
    """One TSV line written with the csv module (quoting as in the published files)."""
    import io

    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerow(cells)
    return buf.getvalue()


def write_ppo_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("prompt\tresponse\treward\n" + "".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# PPO CSV
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["qwen2", "llama3", "toolllama"])
def test_ppo_csv_golden(tmp_path: Path, fmt: str) -> None:
    path = write_ppo_csv(
        tmp_path / "ppo.csv", [ppo_line(fmt), ppo_line(fmt, turns=(TURN1,), obs=(), rewards=[0.0])]
    )
    rows = read_steptool_ppo_csv(path, on_error="raise")
    assert rows.stats.records == 2 and rows.stats.skipped == 0
    t = rows[0]
    assert t.chat_format == fmt and t.source_line == 2 and t.source_path == str(path)
    assert [(m.role, m.content) for m in t.query_messages] == [("system", SYSTEM), ("user", USER)]
    assert t.turns == [TURN0, TURN1]
    assert t.observations == [OBS0]
    assert t.step_rewards == [1.0, 0.5] and all(type(r) is float for r in t.step_rewards)
    prompts, responses = render_ppo_cells(fmt, [TURN0, TURN1], [OBS0])
    assert t.raw_prompts == prompts and t.raw_responses == responses
    assert rows[1].source_line == 3 and rows[1].turns == [TURN1] and rows[1].observations == []


@pytest.mark.parametrize("fmt", ["qwen2", "llama3", "toolllama"])
def test_ppo_csv_explicit_format(tmp_path: Path, fmt: str) -> None:
    path = write_ppo_csv(tmp_path / "ppo.csv", [ppo_line(fmt)])
    assert read_steptool_ppo_csv(path, chat_format=fmt, on_error="raise")[0].turns == [TURN0, TURN1]
    other = "toolllama" if fmt != "toolllama" else "qwen2"
    with pytest.raises(DataFormatError, match=rf":2: prompt\[0\] is not {other}"):
        read_steptool_ppo_csv(path, chat_format=other, on_error="raise")


def test_ppo_csv_format_alias_and_unknown(tmp_path: Path) -> None:
    path = write_ppo_csv(tmp_path / "ppo.csv", [ppo_line("llama3")])
    assert read_steptool_ppo_csv(path, chat_format="llama3-1")[0].chat_format == "llama3"
    with pytest.raises(ValueError, match="chat_format"):
        read_steptool_ppo_csv(path, chat_format="mistral")
    with pytest.raises(ValueError, match="on_error"):
        read_steptool_ppo_csv(path, on_error="ignore")  # type: ignore[arg-type]


def _malformed_ppo(tmp_path: Path) -> Path:
    prompts, responses = render_ppo_cells("qwen2", [TURN0, TURN1], [OBS0])
    lines = [
        ppo_line("qwen2"),  # 2 ok
        ppo_raw_line(repr(prompts), repr(responses), "[1.0]"),  # 3 length mismatch
        ppo_raw_line("['<|im_start|>system", repr(responses), "[1.0, 0.5]"),  # 4 not a literal
        ppo_raw_line(repr(prompts), repr(responses), "['high', 0.5]"),  # 5 reward not numeric
        ppo_raw_line(repr(prompts), repr(responses)),  # 6 two fields
        ppo_raw_line("__import__('os').system('echo pwned')", repr(responses), "[1.0, 0.5]"),  # 7 code
        ppo_raw_line(repr(prompts), repr(responses), "[1.0, float('nan')]"),  # 8 call, not a literal
        ppo_raw_line(
            repr(prompts[:1] + ["<|im_start|>user\nmore<|im_end|>\n"]), repr(responses), "[1, 0]"
        ),  # 9
        ppo_line("qwen2", rewards=[0, 1]),  # 10 ok (ints are numbers)
    ]
    return write_ppo_csv(tmp_path / "bad.csv", lines)


def test_ppo_csv_malformed_rows_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _malformed_ppo(tmp_path)
    with caplog.at_level(logging.WARNING):
        rows = read_steptool_ppo_csv(path, on_error="skip")
    assert [r.source_line for r in rows] == [2, 10]
    assert rows[1].step_rewards == [0.0, 1.0]
    assert rows.stats.records == 2 and rows.stats.skipped == 7
    assert [line for line, _ in rows.stats.skipped_records] == [3, 4, 5, 6, 7, 8, 9]
    reasons = dict(rows.stats.skipped_records)
    assert "2 prompts, 2 responses and 1 rewards" in reasons[3]
    assert "not a Python literal" in reasons[4] and "not a finite number" in reasons[5]
    assert "expected 3 tab-separated fields, found 2" in reasons[6]
    assert "not a Python literal" in reasons[7] and "not a Python literal" in reasons[8]
    assert "prompt[1] does not end with an open assistant header" in reasons[9]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for line in (3, 4, 5, 6, 7, 8, 9):
        assert f"{path}:{line}:" in logged


def test_ppo_csv_malformed_rows_raise(tmp_path: Path) -> None:
    path = _malformed_ppo(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_steptool_ppo_csv(path, on_error="raise")
    assert info.value.line == 3 and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:3: ")


def test_ppo_csv_unexpected_mid_segment_roles(tmp_path: Path) -> None:
    prompts, responses = render_ppo_cells("qwen2", [TURN0, TURN1], ["x"])
    prompts[1] = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    path = write_ppo_csv(tmp_path / "p.csv", [ppo_raw_line(repr(prompts), repr(responses), "[1, 1]")])
    with pytest.raises(DataFormatError, match=r"prompt\[1\] holds roles \['user'\]"):
        read_steptool_ppo_csv(path, on_error="raise")


def test_ppo_csv_header_errors_always_raise(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("prompt\tresponses\treward\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r":1: header lacks column\(s\) \['response'\]"):
        read_steptool_ppo_csv(path, on_error="skip")
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match=":1: empty file"):
        read_steptool_ppo_csv(path, on_error="skip")


def test_ppo_csv_large_cells(tmp_path: Path) -> None:
    big = '{"error": "", "response": "' + "x" * 300_000 + '"}'
    path = write_ppo_csv(tmp_path / "big.csv", [ppo_line("qwen2", obs=(big,))])
    assert read_steptool_ppo_csv(path, on_error="raise")[0].observations == [big]


# ------------------------------------------------------------------------------------------------
# ReAct turns
# ------------------------------------------------------------------------------------------------


def test_parse_react_turn_tool_call() -> None:
    assert parse_react_turn(TURN0) == (
        "I should look up the weather first.",
        "get_weather",
        {"city": "Paris"},
    )
    thought, action, action_input = parse_react_turn("\nThought:  \nAction: get_weather\nAction Input: {}")
    assert (thought, action, action_input) == ("", "get_weather", {})


def test_parse_react_turn_without_thought_pretty_json() -> None:
    turn = 'Action: get_weather\nAction Input: {\n  "city": "Oslo",\n  "days": 3\n}\n'
    assert parse_react_turn(turn) == ("", "get_weather", {"city": "Oslo", "days": 3})


def test_parse_react_turn_strips_end_tokens() -> None:
    for end in ("<|im_end|>\n", "<|eot_id|>", "</s>"):
        assert parse_react_turn(TURN1 + end).action_input == {
            "return_type": "give_answer",
            "final_answer": "It is 21 C and sunny in Paris.",
        }


def test_parse_react_turn_last_action_wins() -> None:
    turn = 'Thought: Plan:\nAction: try the cache first\nAction: get_weather\nAction Input: {"city": "Rome"}'
    assert parse_react_turn(turn) == ("Plan:\nAction: try the cache first", "get_weather", {"city": "Rome"})


def test_parse_react_turn_invalid_input_and_no_action() -> None:
    assert parse_react_turn('Action: get_weather\nAction Input: {"city": "Pa') == (
        "",
        "get_weather",
        '{"city": "Pa',
    )
    assert parse_react_turn('Action: get_weather\nAction Input: ["Paris"]').action_input == '["Paris"]'
    assert parse_react_turn("It is probably sunny.") == ("It is probably sunny.", None, "")
    assert parse_react_turn("Thought: Finish\nAction Input: {}") == ("Finish", None, {})


def test_finish_info_variants() -> None:
    assert finish_info(TURN1) == FinishInfo("give_answer", "It is 21 C and sunny in Paris.")
    assert finish_info(TURN0) is None
    give_up = (
        'Thought: the tool is down.\nAction: Finish\nAction Input: {"return_type": "give_up_and_restart"}'
    )
    assert finish_info(give_up) == FinishInfo("give_up_and_restart", None)
    only_answer = 'Action: Finish\nAction Input: {"final_answer": "Sunny."}'
    assert finish_info(only_answer) == FinishInfo("give_answer", "Sunny.")
    truncated = 'Action: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "It is \\"warm'
    assert finish_info(truncated) == FinishInfo("give_answer", 'It is "warm')
    assert is_final_turn(TURN1 + "<|im_end|>\n") and not is_final_turn(TURN0)
    assert finish_info(parse_react_turn(give_up)).return_type == "give_up_and_restart"


# ------------------------------------------------------------------------------------------------
# SFT / RFT JSON
# ------------------------------------------------------------------------------------------------


def _sft_doc(tool_role: str = "function") -> dict:
    def convo(n_calls: int) -> list[dict]:
        msgs = [{"from": "system", "value": "You are AutoGPT."}, {"from": "user", "value": USER}]
        for _ in range(n_calls):
            msgs += [{"from": "assistant", "value": "\n" + TURN0}, {"from": tool_role, "value": OBS0}]
        return msgs + [{"from": "assistant", "value": "\n" + TURN1}]

    return {
        "q1": {"cnt": 2, "instances": [{"id": "Step 2: weather", "conversations": convo(0)}]},
        "q2": {
            "cnt": 2,
            "instances": [
                {"id": "Step 2: weather", "conversations": convo(0)},
                {"id": "Step 4: weather", "conversations": convo(1)},
            ],
        },
    }


def _line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


def test_sft_json_golden(tmp_path: Path) -> None:
    path = tmp_path / "sft.json"
    text = json.dumps(_sft_doc(), indent=2)
    path.write_text(text, encoding="utf-8")
    convs = read_sft_json(path)
    assert convs.stats.records == 3 and convs.stats.skipped == 0
    assert [(c.query_id, c.source_id) for c in convs] == [
        ("q1", "Step 2: weather"),
        ("q2", "Step 2: weather"),
        ("q2", "Step 4: weather"),
    ]
    assert [c.source_line for c in convs] == [_line_of(text, '  "q1": {')] + [_line_of(text, '  "q2": {')] * 2
    last = convs[2]
    assert [m.role for m in last.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert last.messages[3].content == OBS0 and last.messages[4].content == "\n" + TURN1
    assert last.to_messages()[1] == {"role": "user", "content": USER}


def test_rft_json_accepts_tool_and_function_roles(tmp_path: Path) -> None:
    doc = _sft_doc(tool_role="tool")
    doc["q2"]["instances"][1]["conversations"][3]["from"] = "function"
    path = tmp_path / "rft.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    convs = read_rft_json(path, on_error="raise")
    assert [m.role for m in convs[2].messages].count("tool") == 1
    assert all(c.source_line == 1 for c in convs)  # compact JSON: everything on line 1


def test_sft_json_malformed_instances(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = _sft_doc()
    doc["q2"]["instances"][0]["conversations"][1]["from"] = "robot"
    doc["q2"]["instances"][1]["conversations"] = [{"from": "user", "value": "hi"}]
    doc["q3"] = {"cnt": 1}
    path = tmp_path / "sft.json"
    text = json.dumps(doc, indent=2)
    path.write_text(text, encoding="utf-8")
    q2, q3 = _line_of(text, '  "q2": {'), _line_of(text, '  "q3": {')
    with caplog.at_level(logging.WARNING):
        convs = read_sft_json(path, on_error="skip")
    assert [c.query_id for c in convs] == ["q1"]
    assert [line for line, _ in convs.stats.skipped_records] == [q2, q2, q3]
    msgs = [m for _, m in convs.stats.skipped_records]
    assert (
        "unknown role 'robot'" in msgs[0]
        and "no assistant message" in msgs[1]
        and "no 'instances'" in msgs[2]
    )
    assert f"{path}:{q2}:" in caplog.text
    with pytest.raises(DataFormatError, match=rf":{q2}: query 'q2' instance 0 message 1: unknown role"):
        read_sft_json(path, on_error="raise")


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "q1": {"instances": []},\n  "q2": {"instances": [}\n}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"broken.json:3: invalid JSON"):
        read_sft_json(path, on_error="skip")
    path.write_text('{"q1": {"instances": []}} trailing', encoding="utf-8")
    with pytest.raises(DataFormatError, match="extra data"):
        read_sft_json(path)


# ------------------------------------------------------------------------------------------------
# ETO pairs CSV
# ------------------------------------------------------------------------------------------------

ETO_PROMPT = f"System: \n{SYSTEM}\nUser: \n{USER}\nAssistant: \n{TURN0}\nFunction: {OBS0}\nAssistant: "
ETO_CHOSEN = "\n" + TURN1
ETO_REJECTED = '\nThought: \nAction: Finish\nAction Input: {\n  "return_type": "give_up_and_restart"\n}'


def write_eto(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["prompt", "chosen", "rejected"])
        w.writerows(rows)
    return path


def test_eto_pairs_golden_and_line_numbers(tmp_path: Path) -> None:
    n_prompt_lines = ETO_PROMPT.count("\n") + 1
    path = write_eto(
        tmp_path / "dpo.csv",
        [[ETO_PROMPT, ETO_CHOSEN, ETO_REJECTED], [ETO_PROMPT, ETO_REJECTED, ETO_CHOSEN]],
    )
    pairs = read_eto_pairs_csv(path, on_error="raise")
    assert [p.source_line for p in pairs] == [
        2,
        2 + n_prompt_lines + ETO_CHOSEN.count("\n") + ETO_REJECTED.count("\n"),
    ]
    p = pairs[0]
    assert p.prompt == ETO_PROMPT and p.chosen == ETO_CHOSEN and p.rejected == ETO_REJECTED
    assert [(m.role, m.content) for m in p.prompt_messages] == [
        ("system", "\n" + SYSTEM),
        ("user", "\n" + USER),
        ("assistant", "\n" + TURN0),
        ("tool", OBS0),
    ]
    assert finish_info(p.chosen).return_type == "give_answer"
    assert finish_info(p.rejected).return_type == "give_up_and_restart"


def test_eto_pairs_malformed(tmp_path: Path) -> None:
    path = write_eto(
        tmp_path / "dpo.csv",
        [
            [ETO_PROMPT, ETO_CHOSEN, ETO_REJECTED],  # starts line 2, spans several lines
            [ETO_PROMPT, ETO_CHOSEN],  # wrong width
            [ETO_PROMPT.removesuffix("Assistant: "), ETO_CHOSEN, ETO_REJECTED],  # no open turn
            ["Hello there", ETO_CHOSEN, ETO_REJECTED],  # no headers
            [ETO_PROMPT, "  ", ETO_REJECTED],  # empty chosen
        ],
    )
    lines = path.read_text(encoding="utf-8").split("\n")
    starts = [i + 1 for i, ln in enumerate(lines) if ln.startswith('"System: ') or ln.startswith("Hello")]
    pairs = read_eto_pairs_csv(path, on_error="skip")
    assert [p.source_line for p in pairs] == [2]
    assert [line for line, _ in pairs.stats.skipped_records] == starts[1:]
    with pytest.raises(DataFormatError) as info:
        read_eto_pairs_csv(path, on_error="raise")
    assert info.value.line == starts[1] and "expected 3 tab-separated fields" in info.value.message


# ------------------------------------------------------------------------------------------------
# Reward annotations and predictions
# ------------------------------------------------------------------------------------------------

CALL0 = {"name": "get_weather", "arguments": '{"city": "Paris"}', "response": OBS0}
FINISH = {
    "name": "Finish",
    "arguments": '{"return_type":"give_answer","final_answer":"Sunny."}',
    "response": "",
}


def _annotation_doc() -> dict:
    return {
        "7": {
            "query": "What is the weather in Paris today?",
            "tool_names": ["get_weather", "get_forecast"],
            "answer_steps": [f"Step 1: {CALL0!r}", f"Step 2: {CALL0!r}"],
            "process_reward": {
                "0": {"succeed_tool_calling": [1, 0], "contributions": [5, 1]},
                "1": {"succeed_tool_calling": [1, 0], "contributions": [4, 0]},
                "2": {"succeed_tool_calling": [1, 1], "contributions": [3, 2]},
            },
            "final_step": f"Final step: {FINISH!r}",
            "is_solved": {
                "0": "AnswerStatus.Solved",
                "1": "AnswerStatus.Unsure",
                "2": "AnswerStatus.Unsolved",
            },
        }
    }


def test_reward_annotations_golden(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_annotation_doc(), indent=4), encoding="utf-8")
    (a,) = read_reward_annotations(path, on_error="raise")
    assert (a.query_id, a.source_line, a.tool_names) == ("7", 2, ["get_weather", "get_forecast"])
    assert a.steps[0].name == "get_weather" and a.steps[0].arguments == '{"city": "Paris"}'
    assert a.steps[1].response == OBS0
    assert a.final_step is not None and a.final_step.name == "Finish"
    assert a.succ_calling == [[1, 0], [1, 0], [1, 1]]
    assert a.contribution == [[5, 1], [4, 0], [3, 2]]
    assert a.final_answer_status == ["Solved", "Unsure", "Unsolved"]
    assert a.is_solved() == pytest.approx(0.5)
    step0 = ((1 + 1.0) / 2 + (1 + 0.8) / 2 + (1 + 0.6) / 2) / 3
    step1 = ((0 + 0.2) / 2 + (0 + 0.0) / 2 + (1 + 0.4) / 2) / 3
    assert a.step_rewards() == pytest.approx([step0, step1, 0.5])
    assert a.step_rewards(alpha=0.0) == pytest.approx([0.8, 0.2, 0.5])


def test_reward_annotations_malformed(tmp_path: Path) -> None:
    doc = _annotation_doc()
    bad = json.loads(json.dumps(doc["7"]))
    bad["process_reward"]["1"]["contributions"] = [4]
    doc["8"] = bad
    worse = json.loads(json.dumps(doc["7"]))
    worse["is_solved"]["0"] = "AnswerStatus.Maybe"
    doc["9"] = worse
    path = tmp_path / "ann.json"
    text = json.dumps(doc, indent=4)
    path.write_text(text, encoding="utf-8")
    out = read_reward_annotations(path, on_error="skip")
    assert [a.query_id for a in out] == ["7"]
    assert [ln for ln, _ in out.stats.skipped_records] == [
        _line_of(text, '    "8": {'),
        _line_of(text, '    "9": {'),
    ]
    with pytest.raises(DataFormatError, match=r"query '8' sample 1: 2/1 scores for 2 steps"):
        read_reward_annotations(path, on_error="raise")


def _node(role: str, message, children: list) -> dict:
    return {"role": role, "message": message, "next": children}


def test_predictions_golden(tmp_path: Path) -> None:
    chain = _node("tool", FINISH, [])
    chain = _node("tool", CALL0, [chain])
    chain = _node("system", "", [_node("user", "", [chain])])
    doc = {
        "7": {
            "query": "What is the weather in Paris today?",
            "available_tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            "answer": {
                "method": "DFS_woFilter_w2",
                "total_steps": 4,
                "final_answer": FINISH["arguments"],
                "answer_details": [chain],
            },
        }
    }
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    (p,) = read_predictions(path, on_error="raise")
    assert (p.query_id, p.method, p.total_steps, p.source_line) == ("7", "DFS_woFilter_w2", 4, 2)
    assert [c.name for c in p.calls] == ["get_weather", "Finish"]
    assert p.calls[0].arguments == '{"city": "Paris"}' and p.calls[0].response == OBS0
    assert p.finish() == FinishInfo("give_answer", "Sunny.")
    assert p.available_tools[0]["function"]["name"] == "get_weather"

    doc["7"]["answer"]["answer_details"] = [_node("system", "", [chain, chain])]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataFormatError, match="branches"):
        read_predictions(path, on_error="raise")


# ------------------------------------------------------------------------------------------------
# Chat messages and tokenization
# ------------------------------------------------------------------------------------------------

IM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Rewrites earlier assistant turns once a later message exists (like templates that drop old thinking).
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}elided{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(texts: list[str], template: str = IM_TEMPLATE) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained on the given texts, with an im_start/im_end chat template."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        [*texts, "system user assistant tool elided"], trainers.WordLevelTrainer(special_tokens=special)
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|im_end|>"
    )
    hf.chat_template = template
    return hf


def _ids(tok: PreTrainedTokenizerFast, messages: list[dict], gen: bool) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _fixture_traj(tmp_path: Path, turns=(TURN0, TURN1), obs=(OBS0,), rewards=REWARDS):
    path = write_ppo_csv(tmp_path / "ppo.csv", [ppo_line("qwen2", turns=turns, obs=obs, rewards=rewards)])
    return read_steptool_ppo_csv(path, on_error="raise")[0]


def test_to_messages(tmp_path: Path) -> None:
    assert to_messages(_fixture_traj(tmp_path)) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER},
        {"role": "assistant", "content": TURN0},
        {"role": "tool", "content": OBS0},
        {"role": "assistant", "content": TURN1},
    ]


def test_tokenize_offline_trajectory_token_in_token_out(tmp_path: Path) -> None:
    traj = _fixture_traj(tmp_path)
    tok = make_tokenizer([SYSTEM, USER, TURN0, OBS0, TURN1])
    out = tokenize_offline_trajectory(traj, tok)
    messages = to_messages(traj)
    assert out.prompt_ids == _ids(tok, messages[:2], gen=True)
    assert out.prompt_ids + out.response_ids == _ids(tok, messages, gen=False)
    assert tok.unk_token_id not in out.prompt_ids + out.response_ids

    def span(step: int, action: bool) -> list[int]:
        return [
            t
            for t, a, s in zip(out.response_ids, out.action_mask, out.step_index, strict=True)
            if s == step and a == int(action)
        ]

    for k, turn in enumerate([TURN0, TURN1]):
        assert tok.convert_ids_to_tokens(span(k, True)) == [*tok.tokenize(turn), "<|im_end|>"]
    assert tok.convert_ids_to_tokens(span(0, False)) == [
        "<|im_start|>",
        "tool",
        *tok.tokenize(OBS0),
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
    ]
    assert span(1, False) == []
    assert out.obs_mask == [1 - a for a in out.action_mask]
    assert out.rollout_logprobs == [0.0] * len(out.response_ids)
    assert [s.reward for s in out.steps] == REWARDS
    assert out.steps[0].tool_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert out.steps[0].observation == OBS0 and not out.steps[0].is_final and out.steps[0].parse_error is None
    assert out.steps[1].is_final and out.steps[1].info == {"return_type": "give_answer"}
    assert (out.done, out.truncated, out.end_reason) == (True, False, "answer")
    assert out.final_answer == "It is 21 C and sunny in Paris." and out.is_solved == 0.5
    assert out.task_id == "ppo.csv:2" and out.meta["has_rollout_logprobs"] is False and out.group_id
    batch = collate([out], pad_id=tok.pad_token_id)
    assert batch.step_rewards.tolist() == [REWARDS]
    assert batch.action_mask.sum().item() == sum(out.action_mask)


def test_tokenize_unfinished_trajectory_is_truncated(tmp_path: Path) -> None:
    traj = _fixture_traj(tmp_path, turns=(TURN0, TURN0), obs=(OBS0,), rewards=[1.0, 1.0])
    out = tokenize_offline_trajectory(traj, make_tokenizer([SYSTEM, USER, TURN0, OBS0]))
    assert (out.done, out.truncated, out.end_reason, out.final_answer) == (False, True, "max_turns", None)


def test_tokenize_rejects_prefix_unstable_template(tmp_path: Path) -> None:
    traj = _fixture_traj(tmp_path)
    tok = make_tokenizer([SYSTEM, USER, TURN0, OBS0, TURN1], template=UNSTABLE_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="not prefix-stable: adding message 3 \\(tool\\)"):
        tokenize_offline_trajectory(traj, tok)


# ------------------------------------------------------------------------------------------------
# Conformance with the published example files
# ------------------------------------------------------------------------------------------------

DATA_DIR = Path(
    os.environ.get(
        "STEPTOOL_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "steptool"
    )
)


@pytest.fixture
def published() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"published StepTool examples not found at {DATA_DIR}")
    return DATA_DIR


@pytest.mark.parametrize(
    ("folder", "fmt"), [("qwen2", "qwen2"), ("llama3-1", "llama3"), ("toolllama", "toolllama")]
)
def test_published_ppo_csv(published: Path, folder: str, fmt: str) -> None:
    rows = read_steptool_ppo_csv(
        published / "data_train" / folder / "step_grained_for_ppo_example.csv", on_error="raise"
    )
    assert len(rows) > 0 and rows.stats.skipped == 0
    for t in rows:
        assert t.chat_format == fmt
        assert len(t.raw_responses) == len(t.turns) == len(t.step_rewards) >= 1
        assert len(t.observations) == len(t.turns) - 1
        assert all(isinstance(r, float) and math.isfinite(r) and 0.0 <= r <= 1.0 for r in t.step_rewards)
        assert [m.role for m in t.query_messages] == ["system", "user"]
        fin = finish_info(t.turns[-1])
        assert fin is not None and fin.return_type in ("give_answer", "give_up_and_restart")
        for turn in t.turns[:-1]:
            rt = parse_react_turn(turn)
            assert rt.action and rt.action != "Finish"
    first = rows[0]
    tok = make_tokenizer([m["content"] for m in to_messages(first)])
    out = tokenize_offline_trajectory(first, tok)
    assert out.prompt_ids + out.response_ids == _ids(tok, to_messages(first), gen=False)
    assert out.done and out.num_steps == first.num_turns


@pytest.mark.parametrize(
    "reader,rel",
    [
        (read_sft_json, "qwen2/gpt4_dfs_G123_for_sft_example.json"),
        (read_rft_json, "rft/rft_data_example.json"),
    ],
)
def test_published_sft_rft_json(published: Path, reader, rel: str) -> None:
    convs = reader(published / "data_train" / rel, on_error="raise")
    assert len(convs) > 0 and convs.stats.skipped == 0
    for c in convs:
        roles = [m.role for m in c.messages]
        assert roles[0] == "system" and "user" in roles and roles[-1] == "assistant"
        assert set(roles) <= {"system", "user", "assistant", "tool"}
        assert all(parse_react_turn(m.content).action for m in c.messages if m.role == "assistant")
        assert c.query_id and c.source_id and c.source_line >= 1


def test_published_eto_pairs(published: Path) -> None:
    pairs = read_eto_pairs_csv(published / "data_train" / "eto" / "dpo_data_example.csv", on_error="raise")
    assert len(pairs) > 0 and pairs.stats.skipped == 0
    assert pairs[0].source_line == 2 and sorted({p.source_line for p in pairs}) == [
        p.source_line for p in pairs
    ]
    for p in pairs:
        assert [m.role for m in p.prompt_messages[:2]] == ["system", "user"]
        assert p.prompt.endswith("Assistant: ") and p.chosen.strip() and p.rejected.strip()


def test_published_annotations_match_predictions(published: Path) -> None:
    anns = read_reward_annotations(
        published / "data/reward_annotation/qwen2/G123_example_5.json", on_error="raise"
    )
    preds = read_predictions(
        published / "data/model_predictions_converted/qwen2/G123_example.json", on_error="raise"
    )
    assert len(anns) > 0 and len(preds) > 0
    by_id = {p.query_id: p for p in preds}
    for a in anns:
        assert len(a.succ_calling) == len(a.contribution) >= 1 and a.final_answer_status
        rewards = a.step_rewards()
        assert len(rewards) == len(a.steps) + 1 and all(0.0 <= r <= 1.0 for r in rewards)
        p = by_id[a.query_id]
        assert [s.name for s in a.steps] == [c.name for c in p.calls[:-1]]
        assert a.final_step is not None and a.final_step.arguments == p.calls[-1].arguments
    for p in preds:
        assert p.finish() is not None and p.calls[-1].name == "Finish"
