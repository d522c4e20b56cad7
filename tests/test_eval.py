"""Evaluation: golden metrics and the DFSDT decoder (scripted and on the embedded model); the command line
and win rates: tests/test_eval_cli.py."""

from __future__ import annotations

import json
import re

import pytest
import torch

from steprl.chat import ChatEncoder
from steprl.engines.base import Generation, RolloutEngine
from steprl.episode import EpisodeBudget
from steprl.evaluation.dfsdt import DFSDTConfig, answer_verdict, run_dfsdt
from steprl.evaluation.metrics import aggregate, pass_rate, success_by_step_index, win_rate
from steprl.protocol import StepRecord
from tools_env import ToolEnv, get_parser, get_suite
from tools_env.parsers import GIVE_UP_ANSWER

# ---- metrics: golden values computed by hand ---------------------------------------------------


def test_pass_rate_weights_solved_unsure_unsolved():
    # 2 solved, 1 unsure, 1 unsolved: (1 + 1 + 0.5 + 0) / 4
    assert pass_rate([1.0, 0.5, 0.0, 1.0]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        pass_rate([])


def test_success_rate_per_tool_call_index():
    # episode A: ok, fail, ok; B: fail, ok; C: ok; D: no tool call
    # 1st call: A1 B0 C1 -> 2/3 over 3 episodes; 2nd: A0 B1 -> 1/2; 3rd: A1 -> 1/1
    got = success_by_step_index([[1, 0, 1], [0, 1], [1], []])
    assert got == [
        {"index": 1, "count": 3, "success_rate": pytest.approx(2 / 3)},
        {"index": 2, "count": 2, "success_rate": 0.5},
        {"index": 3, "count": 1, "success_rate": 1.0},
    ]
    assert success_by_step_index([[], []]) == []


def test_win_rate_splits_ties_and_ignores_unmatched_tasks():
    a = {"t1": 1.0, "t2": 0.5, "t3": 0.0, "t4": 1.0, "t5": 0.5, "only_a": 1.0}
    b = {"t1": 0.0, "t2": 0.5, "t3": 1.0, "t4": 1.0, "t5": 0.0, "only_b": 0.0}
    # t1 win, t2 tie, t3 loss, t4 tie, t5 win -> (2 + 2 * 0.5) / 5
    w = win_rate(a, b)
    assert (w.wins, w.ties, w.losses, w.num_tasks) == (2, 2, 1, 5)
    assert w.win_rate == pytest.approx(0.6)
    assert win_rate(b, a).win_rate == pytest.approx(0.4)  # antisymmetric: 1 - 0.6
    with pytest.raises(ValueError):
        win_rate({"x": 1.0}, {"y": 1.0})


def _row(task_id, score, calls, steps, end, tokens=10):
    return {"task_id": task_id, "pass_score": score, "tool_success": calls, "num_steps": steps,
            "response_tokens": tokens, "generated_tokens": tokens // 2, "end_reason": end}  # fmt: skip


def test_aggregate_by_hand():
    rows = [_row("a", 1.0, [1, 1], 3, "answer", 30), _row("b", 0.5, [0], 2, "answer", 20),
            _row("c", 0.0, [1, 0, 0], 3, "max_turns", 40)]  # fmt: skip
    agg = aggregate(rows)
    assert agg["pass_rate"] == pytest.approx(0.5)
    assert agg["labels"] == {"solved": 1, "unsolved": 1, "unsure": 1}
    assert agg["tool_success_rate"] == pytest.approx(3 / 6)
    assert agg["mean_steps"] == pytest.approx(8 / 3) and agg["mean_tool_calls"] == pytest.approx(2.0)
    assert agg["mean_response_tokens"] == pytest.approx(30.0) and agg[
        "mean_generated_tokens"
    ] == pytest.approx(15.0)
    assert agg["end_reasons"] == {"answer": 2, "max_turns": 1}
    assert [r["success_rate"] for r in agg["tool_success_by_index"]] == pytest.approx([2 / 3, 0.5, 0.0])


# ---- DFSDT acceptance rule -----------------------------------------------------------------------


def _ok_step(output):
    return StepRecord(text="", tool_calls=[{"name": "t", "arguments": {}}], succ_calling=1.0,
                      info={"calls": [{"name": "t", "ok": True, "output": output}]})  # fmt: skip


def test_answer_verdict_rule():
    lookup = [_ok_step("59")]
    assert answer_verdict("The answer is 59.", lookup) is None
    assert answer_verdict("  ", lookup) == "empty answer"
    assert answer_verdict(GIVE_UP_ANSWER, lookup) == "gave up"
    assert answer_verdict("Sorry, I cannot find it.", lookup) == "gave up"
    assert answer_verdict("The answer is 60.", lookup) == "shares nothing with any tool result"
    assert answer_verdict("The answer is 59.", []) == "no successful tool call before the answer"
    failed = [StepRecord(text="", succ_calling=0.0, info={"calls": [{"ok": False, "output": "59"}]})]
    assert answer_verdict("59", failed) == "no successful tool call before the answer"
    assert answer_verdict("The answer is 60.", [], require_grounding=False) is None
    assert (
        answer_verdict("Transferred the money to Emil.", [_ok_step("Transferred 5 from jade to emil.")])
        is None
    )


# ---- DFSDT on scripted turns: exact search order, backtracking, replay, budget -------------------

_ASSISTANT = re.compile(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", re.DOTALL)


def _call(name, **arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class ScriptedEngine(RolloutEngine):
    """The k-th request for a node (the path of assistant turns in its prompt) gets ``script[path][k]``."""

    def __init__(self, encoder: ChatEncoder, script: dict[tuple[str, ...], list[str]]) -> None:
        self.encoder, self.script, self.asked, self.requests = encoder, script, {}, 0

    def generate(self, prompts, max_tokens, temperature, seed=None):
        out = []
        for p in prompts:
            path = tuple(_ASSISTANT.findall(self.encoder.tokenizer.decode(p, skip_special_tokens=False)))
            k = self.asked.get(path, 0)
            self.asked[path] = k + 1
            ids = self.encoder.action_ids(self.script[path][k])
            out.append(Generation(ids, [-1.0] * len(ids), True))
            self.requests += 1
        return out

    def load_weights(self, weights_dir):
        raise NotImplementedError


def _encoder(tokenizer, suite):
    return ChatEncoder(tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt)


def _atlas_script(task):
    c, f = task.meta["countries"], task.meta["field"]
    look = [_call("lookup", country=x, field=f) for x in c]
    calc = _call("calculator", expression=task.meta["expression"])
    # root: a failing call, then the lookups; after them: a give-up answer, then the calculator; then the answer
    script = {(): [_call("lookup", country="Nowhere", field=f), look[0]]}
    for i in range(1, len(c)):
        script[tuple(look[:i])] = [look[i]]
    script[tuple(look)] = ["I don't know.", calc]
    script[(*look, calc)] = [f"The answer is {task.answer}."]
    return script


def test_dfsdt_backtracks_past_failed_steps_and_give_ups(tokenizer):
    atlas = get_suite("atlas")
    task = atlas.tasks("test", 2, 0)[1]  # sum2: two lookups, a calculator call, the answer
    enc = _encoder(tokenizer, atlas)
    engine, env = ScriptedEngine(enc, _atlas_script(task)), ToolEnv()
    budget = EpisodeBudget(max_turns=6, max_response_tokens=400, max_tokens_per_turn=64)
    (traj,) = run_dfsdt(engine, env, {"atlas": enc}, get_parser("hermes"), [task], budget, DFSDTConfig(3, 20))
    s = traj.meta["search"]
    assert [(e["depth"], e["candidate"], e["outcome"]) for e in s["events"]] == [
        (0, 0, "failed step"),
        (0, 1, "descend"),
        (1, 0, "descend"),
        (2, 0, "rejected: gave up"),
        (2, 1, "descend"),
        (3, 0, "accepted"),
    ]
    assert s["accepted"] and s["model_calls"] == engine.requests == 6 and s["backtracks"] == 2
    assert s["max_depth"] == 4 and s["tool_calls"] == 4 and s["replayed_calls"] == 0
    assert traj.end_reason == "answer" and traj.done and traj.final_answer == f"The answer is {task.answer}."
    assert [st.succ_calling for st in traj.steps[:-1]] == [1.0, 1.0, 1.0] and traj.steps[-1].is_final
    assert env.num_sessions == 0

    # the same tree under a budget of 3 model calls: it stops and returns the first rejected answer
    engine = ScriptedEngine(enc, _atlas_script(task))
    (cut,) = run_dfsdt(
        engine, ToolEnv(), {"atlas": enc}, get_parser("hermes"), [task], budget, DFSDTConfig(3, 4)
    )
    assert cut.meta["search"]["model_calls"] == engine.requests == 4 and not cut.meta["search"]["accepted"]
    assert cut.final_answer == "I don't know." and cut.end_reason == "answer"
    # budget 1: no answer anywhere; the path returned is open, so it is marked truncated
    (one,) = run_dfsdt(ScriptedEngine(enc, _atlas_script(task)), ToolEnv(), {"atlas": enc},
                       get_parser("hermes"), [task], budget, DFSDTConfig(3, 1))  # fmt: skip
    assert one.meta["search"]["model_calls"] == 1
    assert (one.end_reason, one.truncated, one.done) == ("no_action", True, False)


def test_dfsdt_replays_the_call_prefix_into_a_fresh_session(tokenizer):
    """Backtracking past a state-changing call must not leave its effect in the returned path's state."""
    bank = get_suite("bank")
    task = bank.tasks("test", 1, 0)[0]
    a, b = list(task.meta["initial"])[:2]
    enc = _encoder(tokenizer, bank)
    read = _call("get_balance", account=a)
    move = _call("transfer", source=a, target=b, amount=7)
    dep = _call("deposit", account=b, amount=11)
    script = {
        (): [read],
        (read,): [move, dep],
        (read, move): ["Sorry, I cannot.", "I don't know."],  # both rejected: back to (read,)
        (read, dep): [f"Deposited 11 into {b}."],
    }
    env = ToolEnv()
    budget = EpisodeBudget(max_turns=6, max_response_tokens=400, max_tokens_per_turn=64)
    (traj,) = run_dfsdt(ScriptedEngine(enc, script), env, {"bank": enc}, get_parser("hermes"), [task], budget,
                        DFSDTConfig(2, 20))  # fmt: skip
    s = traj.meta["search"]
    assert [e["outcome"] for e in s["events"]] == [
        "descend", "descend", "rejected: gave up", "rejected: gave up", "descend", "accepted",
    ]  # fmt: skip
    assert s["backtracks"] == 2 and s["sessions_opened"] == 2 and s["replayed_calls"] == 1
    assert s["replay_mismatches"] == 0
    expected = dict(task.meta["initial"])
    expected[b] += 11  # the deposit only: the abandoned transfer was not replayed
    assert traj.meta["final_state"]["balances"] == expected
    assert env.num_sessions == 0


# ---- DFSDT with the transformers engine on the embedded model ------------------------------------


class CountingEngine(RolloutEngine):
    def __init__(self, inner: RolloutEngine) -> None:
        self.inner, self.prompts = inner, 0

    def generate(self, prompts, max_tokens, temperature, seed=None):
        self.prompts += len(prompts)
        return self.inner.generate(prompts, max_tokens, temperature, seed)

    def load_weights(self, weights_dir):
        self.inner.load_weights(weights_dir)


@pytest.mark.slow
def test_dfsdt_on_the_embedded_model_respects_the_budget(tiny_model_path, tokenizer):
    from steprl.engines.hf_engine import HFEngine

    atlas = get_suite("atlas")
    enc = _encoder(tokenizer, atlas)
    engine = CountingEngine(HFEngine(tiny_model_path, [enc.eot_id], pad_token_id=tokenizer.pad_token_id))
    tasks = atlas.tasks("test", 3, 0)
    # one turn per episode: a tool call ends at max_turns and an answer has no tool result to stand on, so
    # every candidate fails and the search must backtrack until the width or the budget is used up
    budget = EpisodeBudget(max_turns=1, max_response_tokens=64, max_tokens_per_turn=12)
    env = ToolEnv()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several OpenMP threads crawl when the machine's cores are all busy
    try:
        _search_until_budget_or_width(engine, env, enc, tasks, budget)
    finally:
        torch.set_num_threads(threads)
    assert env.num_sessions == 0


def _search_until_budget_or_width(engine, env, enc, tasks, budget):
    from workers.reward import score_trajectory

    for width, max_calls, expected_calls in ((3, 2, 2), (2, 5, 2)):
        engine.prompts = 0
        trajs = run_dfsdt(engine, env, {"atlas": enc}, get_parser("hermes"), tasks, budget,
                          DFSDTConfig(width, max_calls), temperature=1.0, seed=0)  # fmt: skip
        assert engine.prompts == expected_calls * len(tasks)
        for t, task in zip(trajs, tasks, strict=True):
            s = t.meta["search"]
            assert s["model_calls"] == expected_calls <= max_calls
            assert s["backtracks"] == expected_calls - 1 and not s["accepted"]
            assert all(not e["outcome"].startswith(("descend", "accepted")) for e in s["events"])
            score_trajectory(t, task, "rule", 1.0, True)
            assert t.is_solved in (0.0, 0.5, 1.0)
