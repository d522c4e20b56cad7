"""The relay suite: deterministic generator, failure rates as configured, golden reward rules on
hand-written episodes, and every task solved by its reference solution through the real ToolEnv."""

from __future__ import annotations

import math
import random
import sys

import pytest

from tools_env import GIVE_UP_ANSWER, ToolEnv, get_parser, get_suite
from tools_env.suite import Task
from tools_env.suites.relay import (
    GIVE_UP_TEXT,
    RATE_LIMITED,
    UNAVAILABLE,
    RelayParams,
    RelaySuite,
    data_flow_contributions,
    gives_up,
)


def ok(name: str, arguments: dict, output: str) -> dict:
    return {"name": name, "arguments": arguments, "ok": True, "output": output}


def failed(name: str, arguments: dict, output: str) -> dict:
    return {"name": name, "arguments": arguments, "ok": False, "output": f"Error: {output}"}


def replay(task: Task, messages: list[dict], env: ToolEnv) -> tuple[list[dict], str | None]:
    """Run a demonstration's calls through the real environment; its outputs must match the tools'."""
    parse = get_parser("hermes")
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
        assert [o.output for o in outcomes] == [messages[i + 1]["content"]], task.task_id
        steps.append({"calls": [o.to_dict() for o in outcomes]})
    env.close_session(session)
    return steps, final


def test_registered_and_documents_its_rules():
    suite = get_suite("relay")
    assert isinstance(suite, RelaySuite)
    doc = sys.modules[RelaySuite.__module__].__doc__
    for word in ("SuccCalling", "Contribution", "IsSolved"):
        assert word in doc
    names = {t.name for t in suite.tools()}
    assert {"find_user", "list_orders", "search_orders", "get_order", "order_history"} <= names
    assert {"weather", "web_search"} <= names  # distractors


def test_generator_is_deterministic_and_splits_are_disjoint():
    a, b = RelaySuite().tasks("train", 60, 3), RelaySuite().tasks("train", 60, 3)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.to_dict() for t in RelaySuite().tasks("train", 60, 4)] != [t.to_dict() for t in a]
    train = {(t.question, str(t.meta["world"])) for t in RelaySuite().tasks("train", 300, 0)}
    test = {(t.question, str(t.meta["world"])) for t in RelaySuite().tasks("test", 300, 0)}
    assert not train & test
    # demonstrations are a pure function of (task, rng seed, share)
    task = a[0]
    assert RelaySuite().demonstration(task, random.Random(5), 0.5) == RelaySuite().demonstration(
        task, random.Random(5), 0.5
    )
    with pytest.raises(ValueError, match="split"):
        RelaySuite().tasks("dev", 1, 0)
    with pytest.raises(ValueError, match="transient_rate"):
        RelaySuite(RelayParams(transient_rate=1.5))


def test_task_mix_and_call_counts():
    suite = RelaySuite()
    tasks = suite.tasks("train", 400, 0)
    kinds = [t.meta["kind"] for t in tasks]
    unsolvable = sum(k in ("missing_user", "archive") for k in kinds) / len(kinds)
    # 400 draws of p = 0.15: standard error 0.018; 4 standard errors
    assert abs(unsolvable - suite.params.unsolvable_share) < 0.072
    calls = [
        sum(m["role"] == "assistant" for m in suite.reference_calls(t)) - 1
        for t, k in zip(tasks, kinds, strict=True)
        if k in ("total", "status_total")
    ]
    assert min(calls) >= 4  # every solvable task needs 4+ calls
    share_4_to_8 = sum(4 <= c <= 8 for c in calls) / len(calls)
    assert share_4_to_8 > 0.8, share_4_to_8  # retries make a few longer


@pytest.mark.parametrize("split", ["train", "test"])
def test_reference_solution_solves_every_task_through_the_real_env(split: str):
    suite, env = RelaySuite(), ToolEnv()
    for task in suite.tasks(split, 150, 1):
        messages = suite.reference_calls(task)
        steps, final = replay(task, messages, env)
        assert suite.final_answer_correct(task, final, {}) == 1.0, task.task_id
        contrib = suite.contributions(task, steps, final)
        assert len(contrib) == len(steps)
        if task.meta["kind"] in ("total", "status_total"):
            # every successful call of the short optimal solution feeds the answer, except list pages
            # or retries: at least find_user, one listing, each needed order and the calculator
            assert sum(contrib) >= 2 + len(task.meta["prices"]), task.task_id
        else:
            assert sum(contrib) == 1.0, task.task_id  # the call that showed the obstacle


@pytest.mark.parametrize(
    ("tool", "arguments", "rate_key", "message"),
    [
        ("get_order", None, "transient_rate", UNAVAILABLE),
        ("find_user", None, "transient_rate", UNAVAILABLE),
        ("search_orders", None, "rate_limit_rate", RATE_LIMITED),
    ],
)
def test_failure_rates_match_their_configuration(tool, arguments, rate_key, message):
    """Per-attempt failure frequency over 3000 first attempts and 3000 second attempts.

    Tolerance: 4 binomial standard errors (sqrt(p (1 - p) / n); about 0.028 at p = 0.35, n = 3000).
    Second attempts fail independently at the same rate, so a retry pays off.
    """
    params = RelayParams(transient_rate=0.2, rate_limit_rate=0.35)
    suite = RelaySuite(params)
    fn = getattr(suite, tool)
    rate = getattr(params, rate_key)
    first, second, n = 0, 0, 0
    for task in suite.tasks("train", 1000, 7):
        users = task.meta["world"]["users"]
        for name, user in list(users.items())[:3]:
            if tool == "get_order":
                args = {"order": user["orders"][0]["id"]}
            elif tool == "find_user":
                args = {"name": name}
            else:
                args = {"user": user["id"], "status": "shipped"}
            state = suite.initial_state(task)
            outcomes = []
            for _ in range(2):
                try:
                    fn(state, **args)
                    outcomes.append(False)
                except Exception as e:
                    assert message in str(e)
                    outcomes.append(True)
            first += outcomes[0]
            second += outcomes[1]
            n += 1
            if n == 3000:
                break
        if n == 3000:
            break
    assert n == 3000
    tolerance = 4 * math.sqrt(rate * (1 - rate) / n)
    assert abs(first / n - rate) < tolerance, (first / n, rate)
    assert abs(second / n - rate) < tolerance, (second / n, rate)
    # the same task, call and attempt fail the same way in a new session (replays are exact)
    task = suite.tasks("train", 1, 7)[0]
    user = next(iter(task.meta["world"]["users"].values()))
    args = {"order": user["orders"][0]["id"]}
    runs = []
    for _ in range(2):
        state, seq = suite.initial_state(task), []
        for _ in range(4):
            try:
                suite.get_order(state, **args)
                seq.append("ok")
            except Exception:
                seq.append("fail")
        runs.append(seq)
    assert runs[0] == runs[1]


def test_zero_rates_never_fail_and_deprecated_always_fails():
    suite = RelaySuite(RelayParams(transient_rate=0.0, rate_limit_rate=0.0))
    env_free = 0
    for task in suite.tasks("train", 50, 2):
        state = suite.initial_state(task)
        for name, user in task.meta["world"]["users"].items():
            suite.find_user(state, name)
            suite.search_orders(state, user["id"], "pending")
            for o in user["orders"]:
                suite.get_order(state, o["id"])
            with pytest.raises(Exception, match="deprecated"):
                suite.order_history(state, name)
            env_free += 1
    assert env_free > 100


def test_tools_give_informative_argument_errors_and_pages():
    suite = RelaySuite(RelayParams(transient_rate=0.0, rate_limit_rate=0.0, page_size=2))
    env = ToolEnv()
    task = next(
        t
        for t in suite.tasks("train", 100, 0)
        if len(next(iter(t.meta["world"]["users"].values()))["orders"]) == 3
    )
    name, user = next(iter(task.meta["world"]["users"].items()))
    ids = [o["id"] for o in user["orders"]]
    state = suite.initial_state(task)
    assert suite.list_orders(state, user["id"]) == f"page 1 of 2: {ids[0]}, {ids[1]}; next page 2"
    assert suite.list_orders(state, user["id"], 2) == f"page 2 of 2: {ids[2]}; last page"
    with pytest.raises(Exception, match="page 3 does not exist; user .* has 2 page"):
        suite.list_orders(state, user["id"], 3)
    with pytest.raises(Exception, match="no user 12; take ids from find_user"):
        suite.list_orders(state, 12)
    with pytest.raises(Exception, match="no order 13; take ids from list_orders"):
        suite.get_order(state, 13)
    # through the environment, schema errors are observations naming the argument
    session = env.open_session(task)
    from tools_env import ToolCall

    out = env.call(session, [ToolCall("search_orders", {"user": user["id"], "status": "lost"})])[0]
    assert not out.ok and "'lost' is not one of" in out.output
    out = env.call(session, [ToolCall("get_order", {"order": "abc"})])[0]
    assert not out.ok and "is not of type 'integer'" in out.output
    env.close_session(session)


# ----------------------------------------------------------------------------- golden reward rules

Q = "What is the total price of the shipped orders of ana?"


def golden_steps() -> list[dict]:
    """A hand-written episode: distractor, find (503 then ok), list (2 pages), 3 reads, a redundant
    read, the calculator. Order 501 (price 20, shipped), 502 (35, pending), 503 (41, shipped)."""
    return [
        {"calls": [ok("weather", {"city": "Zorvelia"}, "sunny, 12 C")]},  # 0
        {"calls": [failed("find_user", {"name": "ana"}, UNAVAILABLE)]},  # 1
        {"calls": [ok("find_user", {"name": "ana"}, "user ana: id 777")]},  # 2
        {"calls": [ok("list_orders", {"user": 777}, "page 1 of 2: 501, 502; next page 2")]},  # 3
        {"calls": [ok("list_orders", {"user": 777, "page": 2}, "page 2 of 2: 503; last page")]},  # 4
        {"calls": [ok("get_order", {"order": 501}, "order 501: lamp, price 20, shipped, W3, cargoa, 2 kg")]},
        {"calls": [ok("get_order", {"order": 502}, "order 502: rug, price 35, pending, W4, cargoa, 5 kg")]},
        {"calls": [ok("get_order", {"order": 503}, "order 503: fan, price 41, shipped, W7, nordpost, 1 kg")]},
        {"calls": [ok("get_order", {"order": 503}, "order 503: fan, price 41, shipped, W7, nordpost, 1 kg")]},
        {"calls": [ok("calculator", {"expression": "20+41"}, "61")]},  # 9
    ]


def test_data_flow_contributions_golden():
    steps = golden_steps()
    # answer 61 <- calculator (9) <- 20 from read 5, 41 from the LATER of the two reads of 503 (8)
    # <- order ids 501 (page 1, step 3) and 503 (page 2, step 4) <- user id 777 (find, step 2).
    # Not credited: the distractor (0), the failed find (1), the pending order read (6, its price
    # never used), the first read of 503 (7: the repeat supplied the value).
    expected = [0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    assert data_flow_contributions(Q, steps, "The answer is 61.") == expected
    # a wrong sum that used the pending order: its read now contributes, the 503 reads do not
    steps[9] = {"calls": [ok("calculator", {"expression": "20+35"}, "55")]}
    assert data_flow_contributions(Q, steps, "The answer is 55.") == [0, 0, 1, 1, 0, 1, 1, 0, 0, 1]
    # an answer with no number flows from nothing
    assert data_flow_contributions(Q, steps, GIVE_UP_TEXT) == [0.0] * 10
    # values already in the question are given, not supplied (a call echoing them gets no credit)
    q2 = "What is 12 plus the price of order 501?"
    echo = [
        {"calls": [ok("web_search", {"query": "12"}, "12 results")]},
        {"calls": [ok("get_order", {"order": 501}, "order 501: lamp, price 20, shipped, W3, cargoa, 2 kg")]},
        {"calls": [ok("calculator", {"expression": "12+20"}, "32")]},
    ]
    assert data_flow_contributions(q2, echo, "32") == [0, 1, 1]
    # several calls in one step: the step contributes if one of them does
    multi = [{"calls": [ok("weather", {"city": "x"}, "rainy, 4 C"), ok("find_user", {"name": "ana"}, "user ana: id 777")]},
             {"calls": [ok("list_orders", {"user": 777}, "page 1 of 1: 501; last page")]}]  # fmt: skip
    assert data_flow_contributions(Q, multi, "501") == [1, 1]


def _task(kind: str, answer: str = "61") -> Task:
    meta = {"kind": kind, "user": "ana", "status": "shipped", "world": {"users": {}}}
    if kind == "missing_user":
        meta["blocker"] = "find_user"
    if kind == "archive":
        meta["blocker"] = "order_history"
    return Task("relay-golden", "relay", Q, answer, meta)


def test_is_solved_golden():
    suite = RelaySuite()
    solvable = _task("status_total")
    assert suite.final_answer_correct(solvable, "The answer is 61.", {}) == 1.0
    assert suite.final_answer_correct(solvable, "61, or maybe 62", {}) == 0.5  # unsure
    assert suite.final_answer_correct(solvable, "The answer is 55.", {}) == 0.0
    assert suite.final_answer_correct(solvable, GIVE_UP_TEXT, {}) == 0.0  # giving up on a solvable task
    assert suite.final_answer_correct(solvable, None, {}) == 0.0
    for kind in ("missing_user", "archive"):
        task = _task(kind, GIVE_UP_TEXT)
        assert suite.final_answer_correct(task, GIVE_UP_TEXT, {}) == 1.0
        assert suite.final_answer_correct(task, GIVE_UP_ANSWER, {}) == 1.0  # ReAct give_up_and_restart
        assert suite.final_answer_correct(task, "i give up.", {}) == 1.0
        assert suite.final_answer_correct(task, "The answer is 61.", {}) == 0.0
    assert gives_up("  I give up: no") and not gives_up("I gave it a try: 5") and not gives_up(None)


def test_unsolvable_contributions_golden():
    suite = RelaySuite()
    steps = [
        {"calls": [failed("find_user", {"name": "zoe"}, UNAVAILABLE)]},  # transient: not the obstacle
        {"calls": [failed("find_user", {"name": "zoe"}, "no customer named 'zoe'")]},  # the obstacle
        {"calls": [ok("weather", {"city": "x"}, "rainy, 4 C")]},
    ]
    task = _task("missing_user", GIVE_UP_TEXT)
    assert suite.contributions(task, steps, GIVE_UP_TEXT) == [0.0, 1.0, 0.0]
    assert suite.contributions(task, steps, "The answer is 3.") == [0.0, 0.0, 0.0]
    archive = _task("archive", GIVE_UP_TEXT)
    hist = [
        {"calls": [failed("order_history", {"name": "ana"}, "order_history is deprecated and was shut down")]}
    ]
    assert suite.contributions(archive, hist, GIVE_UP_TEXT) == [1.0]


def test_suboptimal_demonstrations_carry_flaws_at_the_configured_share():
    suite = RelaySuite()
    tasks = [t for t in suite.tasks("train", 200, 0) if t.meta["kind"] in ("total", "status_total")]
    env = ToolEnv()
    lengths = {}
    for share in (0.0, 1.0):
        rng, n_calls, solved = random.Random(0), 0, 0.0
        for task in tasks:
            messages = suite.demonstration(task, rng, share)
            steps, final = replay(task, messages, env)
            n_calls += len(steps)
            solved += suite.final_answer_correct(task, final, {})
        lengths[share] = (n_calls / len(tasks), solved / len(tasks))
    assert lengths[0.0][1] == 1.0
    assert lengths[1.0][0] > lengths[0.0][0]  # redundant calls, detours and long paths cost calls
    assert lengths[1.0][1] < 1.0  # failed calls not retried lose some answers
