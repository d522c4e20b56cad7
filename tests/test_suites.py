"""The math, retrieval and bank suites: splits, tools, demonstrations replayed for real, reward rules."""

from __future__ import annotations

import random
import sys

import pytest

from tools_env import ToolCall, ToolEnv, get_parser, get_suite
from tools_env.suites.retrieval_corpus import CORPUS, build_corpus

NEW_SUITES = ["math", "retrieval", "bank"]


def replay(suite_name: str, task, messages, env: ToolEnv):
    """Run a demonstration's tool calls against the real tools; return steps, final answer, final state."""
    suite = get_suite(suite_name)
    parse = get_parser(suite.tool_format)
    session = env.open_session(task)
    steps, final = [], None
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        turn = parse(msg["content"])
        if turn.is_final:
            final = turn.final_answer
            break
        outcomes = env.call(session, turn.calls)
        assert [o.output for o in outcomes] == [messages[i + 1]["content"]], (
            "demonstration differs from the tool"
        )
        steps.append({"calls": [o.to_dict() for o in outcomes]})
    return steps, final, env.close_session(session)


@pytest.mark.parametrize("name", NEW_SUITES)
def test_docstring_states_the_reward_rules(name: str):
    doc = sys.modules[type(get_suite(name)).__module__].__doc__
    for word in ("SuccCalling", "Contribution", "IsSolved"):
        assert word in doc


@pytest.mark.parametrize("name", NEW_SUITES)
def test_splits_are_deterministic_and_disjoint(name: str):
    suite = get_suite(name)
    train, test = suite.tasks("train", 60, seed=0), suite.tasks("test", 30, seed=0)
    assert len(train) == 60 and len(test) == 30
    assert [t.to_dict() for t in train] == [t.to_dict() for t in suite.tasks("train", 60, seed=0)]
    assert [t.question for t in suite.tasks("train", 60, seed=1)] != [t.question for t in train]
    key = (
        (lambda t: (t.question, str(sorted(t.meta.get("initial", {}).items()))))
        if name == "bank"
        else (lambda t: t.question)
    )
    assert not {key(t) for t in train} & {key(t) for t in test}
    assert {key(t) for t in suite.tasks("test", 30, seed=5)}.isdisjoint({key(t) for t in train})
    assert len({t.task_id for t in train}) == 60 and all(t.suite == name for t in train + test)
    with pytest.raises(ValueError):
        suite.tasks("validation", 1, seed=0)


@pytest.mark.parametrize("name", NEW_SUITES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_optimal_demonstrations_solve_the_task(name: str, split: str):
    suite, env = get_suite(name), ToolEnv()
    for task in suite.tasks(split, 6, seed=2):
        steps, final, state = replay(name, task, suite.demonstration(task, random.Random(0), 0.0), env)
        assert suite.final_answer_correct(task, final, state) == 1.0
        assert steps and suite.contributions(task, steps, final)[-1] == 1.0
        assert all(c["ok"] for s in steps for c in s["calls"])


@pytest.mark.parametrize("name", NEW_SUITES)
def test_flawed_demonstrations_earn_less(name: str):
    suite, env = get_suite(name), ToolEnv()
    rng = random.Random(7)
    worse = unsolved = 0
    for task in suite.tasks("train", 24, seed=3):
        steps, final, state = replay(name, task, suite.demonstration(task, rng, 1.0), env)
        scores = suite.contributions(task, steps, final)
        assert len(scores) == len(steps) and all(0.0 <= s <= 1.0 for s in scores)
        solved = suite.final_answer_correct(task, final, state)
        worse += min(scores, default=0.0) < 1.0 or solved < 1.0
        unsolved += solved < 1.0
    assert worse >= 12 and unsolved >= 1


# ---- math ---------------------------------------------------------------------------------------
def test_math_python_tool_is_sandboxed():
    env = ToolEnv()
    session = env.open_session(get_suite("math").tasks("train", 1, seed=0)[0])
    ok, net, loop, silent = env.call(session, [
        ToolCall("python", {"code": "print(sum(range(101)))"}),
        ToolCall("python", {"code": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"}),
        ToolCall("python", {"code": "while True: pass"}),
        ToolCall("python", {"code": "x = 1"}),
    ])  # fmt: skip
    assert ok.ok and ok.output == "5050"
    assert not net.ok and not loop.ok
    # the CPU limit normally ends the loop; on a machine busy with other work the wall clock may come first
    assert "CPU time limit" in loop.output or "wall-clock limit" in loop.output
    assert silent.ok and "no output" in silent.output


def test_math_checker():
    suite = get_suite("math")
    task = suite.tasks("test", 1, seed=0)[0]
    answer = int(task.answer)
    assert suite.final_answer_correct(task, f"The answer is {answer:,}.", {}) == 1.0
    assert suite.final_answer_correct(task, f"{answer}.0", {}) == 1.0
    assert suite.final_answer_correct(task, f"{answer} or maybe {answer + 1}", {}) == 0.5
    assert suite.final_answer_correct(task, "I don't know", {}) == 0.0
    assert suite.final_answer_correct(task, None, {}) == 0.0


def test_math_contributions_reward_intermediates_once():
    suite = get_suite("math")
    task = next(t for t in suite.tasks("train", 20, seed=0) if t.meta["intermediates"])
    first = str(task.meta["intermediates"][0])
    step = lambda out, ok=True: {"calls": [{"name": "python", "ok": ok, "output": out, "arguments": {}}]}  # noqa: E731
    steps = [step(first), step(first), step(task.answer), step(task.answer, ok=False), step("7")]
    assert suite.contributions(task, steps, task.answer) == [0.5, 0.0, 1.0, 0.0, 0.0]


# ---- retrieval ----------------------------------------------------------------------------------
def test_corpus_is_bundled_and_deterministic():
    assert [d.text for d in build_corpus()] == [d.text for d in CORPUS]
    assert len(CORPUS) > 100 and len({d.title for d in CORPUS}) == len(CORPUS)


def test_search_ranks_the_named_entry_first():
    suite = get_suite("retrieval")
    for doc in CORPUS[::9]:
        first = suite.search({}, doc.title.replace(" (river)", " river")).splitlines()[0]
        assert first.startswith(f"[1] {doc.title}:")


def test_search_errors_are_observations():
    env = ToolEnv()
    session = env.open_session(get_suite("retrieval").tasks("train", 1, seed=0)[0])
    empty, big_k, nothing = env.call(session, [
        ToolCall("search", {"query": "  "}), ToolCall("search", {"query": "x", "k": 50}),
        ToolCall("search", {"query": "zzzqqq"}),
    ])  # fmt: skip
    assert not empty.ok and not big_k.ok and not nothing.ok and "no entry matches" in nothing.output


def test_retrieval_checker():
    suite = get_suite("retrieval")
    task = next(t for t in suite.tasks("train", 50, seed=0) if not t.answer.isdigit())
    assert suite.final_answer_correct(task, task.answer, {}) == 1.0
    assert suite.final_answer_correct(task, f"The answer is {task.answer.lower()}.", {}) == 1.0
    assert suite.final_answer_correct(task, f"It is the {task.answer} river", {}) == 1.0
    long = f"{task.answer} " + "and many other words that make this answer far too long " * 2
    assert suite.final_answer_correct(task, long, {}) == 0.0
    assert suite.final_answer_correct(task, "Nothing", {}) == 0.0


def test_retrieval_contributions_count_new_gold_documents():
    suite = get_suite("retrieval")
    task = next(t for t in suite.tasks("train", 50, seed=0) if t.meta["hops"] == 2)
    first, second = task.meta["gold_titles"]
    out = lambda title: {"calls": [{"name": "search", "ok": True, "output": f"[1] {title}: text"}]}  # noqa: E731
    steps = [out("Elsewhere"), out(first), out(first), out(second)]
    assert suite.contributions(task, steps, task.answer) == [0.0, 1.0, 0.0, 1.0]


# ---- bank ---------------------------------------------------------------------------------------
def test_bank_tools_change_only_the_session_state():
    suite, env = get_suite("bank"), ToolEnv()
    task = suite.tasks("train", 1, seed=0)[0]
    a, b = sorted(task.meta["initial"])[:2]
    s1, s2 = env.open_session(task), env.open_session(task)
    too_much = task.meta["initial"][a] + 1
    outcomes = env.call(s1, [
        ToolCall("transfer", {"source": a, "target": b, "amount": 5}),
        ToolCall("transfer", {"source": a, "target": b, "amount": too_much}),
        ToolCall("transfer", {"source": a, "target": "nobody", "amount": 1}),
        ToolCall("deposit", {"account": a, "amount": -3}),
        ToolCall("get_balance", {"account": a}),
    ])  # fmt: skip
    assert [o.ok for o in outcomes] == [True, False, False, False, True]
    assert "insufficient funds" in outcomes[1].output
    assert outcomes[4].output == str(task.meta["initial"][a] - 5)
    assert env.close_session(s2)["balances"] == task.meta["initial"]
    assert task.meta["initial"][a] == suite.tasks("train", 1, seed=0)[0].meta["initial"][a]  # task untouched
    env.close_session(s1)


def test_bank_is_checked_on_the_final_state():
    suite = get_suite("bank")
    task = suite.tasks("test", 1, seed=0)[0]
    assert suite.final_answer_correct(task, "done", {"balances": dict(task.meta["expected"])}) == 1.0
    assert suite.final_answer_correct(task, "done", {"balances": dict(task.meta["initial"])}) == 0.0
    assert suite.final_answer_correct(task, "I did it all!", {}) == 0.0


def test_bank_equalize_tasks_are_feasible():
    suite = get_suite("bank")
    for task in [t for t in suite.tasks("train", 200, seed=0) if t.meta["kind"] == "equalize"]:
        a, b = task.meta["needs"]
        assert task.meta["expected"][a] == task.meta["expected"][b]
        assert all(op[1]["amount"] > 0 for op in task.meta["ops"])
