"""``relay``: an order-desk suite where step credit matters (long chains, flaky tools, give-ups).

Each task carries its own small world (3-5 customers, 3-4 orders each) in ``Task.meta["world"]``;
the agent finds a customer's id, lists or searches their orders (paginated), reads noisy order
records, adds prices up and answers. Data flows from one call's output into the next call's input
(name -> user id -> order ids -> prices -> sum -> answer). Tools fail the way real APIs do, each at
a documented rate (:class:`RelayParams`), deterministically per task, call and attempt, so a replay
of the same calls sees the same failures. The design, rules and calibration are in docs/suites.md.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named a real tool, had valid arguments and ran without error
  (a transient 503 or a 429 rate limit is an error; the same call retried may succeed).
* Contribution (data flow, :func:`data_flow_contributions`): 1 for a step with a successful call
  whose output is the latest to hold a number that flows, through a chain of later calls'
  arguments, into the final answer; on an unsolvable task answered by giving up, 1 for the step
  whose error showed the obstacle; 0 otherwise.
* IsSolved: solvable task: 1 if the last integer of the answer is the expected one, 0.5 if it
  appears but not last, 0 otherwise (a give-up is 0); unsolvable task: 1 for giving up, else 0.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

from tools_env.parsers import GIVE_UP_ANSWER
from tools_env.suite import Suite, Task, register_suite
from tools_env.suites.atlas import WORLD as ATLAS_WORLD
from tools_env.suites.atlas import GeneralTools, call_text
from tools_env.suites.bank import HOLDERS
from tools_env.tools import ToolError, tool

STATUSES = ("shipped", "pending", "cancelled")
ITEMS = ("lamp", "chair", "kettle", "radio", "desk", "clock", "rug", "fan")
CARRIERS = ("nordpost", "swiftline", "cargoa")
KINDS = ("total", "status_total", "missing_user", "archive")
UNSOLVABLE_KINDS = ("missing_user", "archive")
SUBOPTIMAL_KINDS = ("not_retried", "redundant", "detour", "long_path")
GIVE_UP_TEXT = "I give up: the tools cannot answer this."
UNAVAILABLE = "503 unavailable, retry"  # transient
RATE_LIMITED = "429 rate limit, retry"  # transient
_GIVE_UP = re.compile(r"^\s*i give up\b", re.IGNORECASE)


@dataclass(frozen=True)
class RelayParams:
    """The suite's documented knobs (docs/suites.md); fixed by calibration before any comparison.

    Rates are per attempt: attempt i of a call fails with the given probability, independently of
    other attempts (drawn from a hash of the task, the call and i), so retrying pays off.
    """

    transient_rate: float = 0.1  # find_user, get_order: "503 unavailable, retry"
    rate_limit_rate: float = 0.2  # search_orders: "429 rate limit, retry"
    page_size: int = 2  # list_orders: order ids per page
    unsolvable_share: float = 0.15  # share of tasks where giving up is the right answer
    min_orders: int = 3
    max_orders: int = 4  # orders per customer (with page_size 2: 2 pages)

    def check(self) -> None:
        for name in ("transient_rate", "rate_limit_rate", "unsolvable_share"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"RelayParams.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.page_size < 1 or not 1 <= self.min_orders <= self.max_orders:
            raise ValueError("RelayParams: page_size >= 1 and 1 <= min_orders <= max_orders are required")


def _uniform(*parts: Any) -> float:
    """A deterministic draw in [0, 1) from the parts (the same call and attempt: the same draw)."""
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def gives_up(answer: str | None) -> bool:
    """Whether a final answer gives up (``I give up ...`` or the ReAct ``give_up_and_restart``)."""
    text = (answer or "").strip()
    return text == GIVE_UP_ANSWER or bool(_GIVE_UP.match(text))


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _arg_ints(arguments: Any) -> set[int]:
    """The integers an agent passed into a call (numbers, and digits inside strings)."""
    if isinstance(arguments, dict):
        return set().union(*(_arg_ints(v) for v in arguments.values())) if arguments else set()
    if isinstance(arguments, list):
        return set().union(*(_arg_ints(v) for v in arguments)) if arguments else set()
    if isinstance(arguments, bool):
        return set()
    if isinstance(arguments, int):
        return {arguments}
    if isinstance(arguments, str):
        return set(_ints(arguments))
    return set()


def data_flow_contributions(
    question: str, steps: list[dict[str, Any]], final_answer: str | None
) -> list[float]:
    """Contribution 1 for each step holding a call whose result flows into the final answer.

    Definition. A *value* is an integer. Each successful call c (``ok``) *provides* the integers of
    its output that are not among its own arguments (an echo of an input is not new data); it
    *consumes* the integers of its arguments. The answer consumes the integers of
    the final answer. A consumer's value v is *supplied* by the latest successful call before it
    whose output contains v, unless v already appears in the question (then nothing supplies it).
    A call contributes if it supplies a value to the answer, or to a call that contributes
    (transitively). A step contributes (1.0) if one of its calls does, else 0.0. Failed calls never
    contribute (they provide nothing); of two identical calls only the later one supplies.
    """
    given = set(_ints(question))
    calls: list[tuple[int, dict[str, Any]]] = [
        (k, c) for k, step in enumerate(steps) for c in step.get("calls", []) if c.get("ok")
    ]
    provides = [set(_ints(str(c.get("output", "")))) - _arg_ints(c.get("arguments")) for _, c in calls]
    scores = [0.0] * len(steps)
    used: set[int] = set()  # indices into ``calls``
    # worklist of (values, consumer position in ``calls``; len(calls) = the answer)
    work: list[tuple[set[int], int]] = [(set(_ints(final_answer or "")) - given, len(calls))]
    while work:
        values, before = work.pop()
        for v in values:
            supplier = next((i for i in reversed(range(before)) if v in provides[i]), None)
            if supplier is None or supplier in used:
                continue
            used.add(supplier)
            k, call = calls[supplier]
            scores[k] = 1.0
            work.append((_arg_ints(call.get("arguments")) - given, supplier))
    return scores


@register_suite("relay")
class RelaySuite(GeneralTools, Suite):
    system_prompt = "You answer questions about orders. Use the tools; retry a failed call."

    def __init__(self, params: RelayParams | None = None) -> None:
        self.params = params or RelayParams()
        self.params.check()

    def entity_tokens(self) -> list[str]:
        return list(HOLDERS)  # already whole tokens (bank): the embedded tokenizer gains none

    def initial_state(self, task: Task) -> dict[str, Any]:
        return {"task": task.task_id, "world": task.meta["world"], "attempts": {}}

    # ---- failures ------------------------------------------------------------------------------
    def _attempt(self, state: dict, name: str, arguments: dict[str, Any]) -> int:
        key = name + json.dumps(arguments, sort_keys=True)
        n = state["attempts"].get(key, 0)
        state["attempts"][key] = n + 1
        return n

    def _maybe_fail(
        self, state: dict, name: str, arguments: dict[str, Any], rate: float, message: str
    ) -> None:
        attempt = self._attempt(state, name, arguments)
        if _uniform(state["task"], name, arguments, attempt) < rate:
            raise ToolError(message)

    # ---- tools ---------------------------------------------------------------------------------
    @tool
    def find_user(self, state: dict, name: str) -> str:
        """A customer's user id."""
        self._maybe_fail(state, "find_user", {"name": name}, self.params.transient_rate, UNAVAILABLE)
        users = state["world"]["users"]
        if name not in users:
            raise ToolError(f"no customer named {name!r}")
        return f"user {name}: id {users[name]['id']}"

    @tool
    def list_orders(self, state: dict, user: int, page: int = 1) -> str:
        """A user's order ids, one page at a time."""
        record = self._user(state, user)
        ids = [o["id"] for o in record["orders"]]
        size = self.params.page_size
        pages = max(1, -(-len(ids) // size))
        if not 1 <= page <= pages:
            raise ToolError(f"page {page} does not exist; user {user} has {pages} page(s)")
        shown = ", ".join(str(i) for i in ids[(page - 1) * size : page * size])
        more = f"; next page {page + 1}" if page < pages else "; last page"
        return f"page {page} of {pages}: {shown}{more}"

    @tool
    def search_orders(
        self, state: dict, user: int, status: Literal["shipped", "pending", "cancelled"]
    ) -> str:
        """A user's order ids with a status."""
        args = {"user": user, "status": status}
        self._maybe_fail(state, "search_orders", args, self.params.rate_limit_rate, RATE_LIMITED)
        ids = [str(o["id"]) for o in self._user(state, user)["orders"] if o["status"] == status]
        return f"{status}: {', '.join(ids) if ids else 'none'}"

    @tool
    def get_order(self, state: dict, order: int) -> str:
        """One order's record."""
        self._maybe_fail(state, "get_order", {"order": order}, self.params.transient_rate, UNAVAILABLE)
        for record in state["world"]["users"].values():
            for o in record["orders"]:
                if o["id"] == order:
                    w, kg = o["noise"]
                    return (
                        f"order {o['id']}: {o['item']}, price {o['price']}, {o['status']}, "
                        f"W{w}, {o['carrier']}, {kg} kg"
                    )
        raise ToolError(f"no order {order}; take ids from list_orders or search_orders")

    @tool
    def order_history(self, state: dict, name: str) -> str:
        """Orders before 2026 (deprecated)."""
        raise ToolError("order_history is deprecated and was shut down")

    @staticmethod
    def _user(state: dict, user: int) -> dict[str, Any]:
        for record in state["world"]["users"].values():
            if record["id"] == user:
                return record
        raise ToolError(f"no user {user}; take ids from find_user")

    # ---- tasks ---------------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"relay-{split}-{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        while len(out) < n:
            kind = (
                rng.choice(UNSOLVABLE_KINDS)
                if rng.random() < self.params.unsolvable_share
                else rng.choice(("total", "status_total"))
            )
            status = rng.choice(("shipped", "pending"))
            world, names = self._world(rng), []
            while not names:  # status_total: a customer with 2+ such orders (a sum needs the calculator)
                names = sorted(world["users"])
                if kind == "status_total":
                    users = world["users"]
                    names = [n for n in names if sum(o["status"] == status for o in users[n]["orders"]) >= 2]
                    world = world if names else self._world(rng)
            target = rng.choice(names)
            if kind == "missing_user":
                target = rng.choice(sorted(set(HOLDERS) - set(names)))
            signature = json.dumps([kind, target, status, world], sort_keys=True)
            if ("test" if zlib.crc32(signature.encode()) % 5 == 0 else "train") != split or signature in seen:
                continue
            seen.add(signature)
            out.append(self._make_task(kind, target, status, world, f"relay-{split}-{len(out)}"))
        return out

    def _world(self, rng: random.Random) -> dict[str, Any]:
        names = rng.sample(HOLDERS, rng.randint(3, 5))
        ids = rng.sample(range(400, 1000), len(names) + len(names) * self.params.max_orders)
        users: dict[str, Any] = {}
        for name in names:
            orders = []
            for _ in range(rng.randint(self.params.min_orders, self.params.max_orders)):
                orders.append(
                    {
                        "id": ids.pop(),
                        "item": rng.choice(ITEMS),
                        "price": rng.randint(10, 99),
                        "status": rng.choice(STATUSES),
                        "carrier": rng.choice(CARRIERS),
                        "noise": [rng.randint(1, 9), rng.randint(1, 9)],
                    }
                )
            users[name] = {"id": ids.pop(), "orders": orders}
        return {"users": users}

    def _make_task(self, kind: str, target: str, status: str, world: dict[str, Any], task_id: str) -> Task:
        meta: dict[str, Any] = {"kind": kind, "user": target, "status": status, "world": world}
        if kind == "archive":
            question = f"Which items did {target} order before 2026?"
            meta["blocker"] = "order_history"
            return Task(task_id, "relay", question, GIVE_UP_TEXT, meta)
        if kind == "missing_user":
            question = f"What is the total price of all orders of {target}?"
            meta["blocker"] = "find_user"
            return Task(task_id, "relay", question, GIVE_UP_TEXT, meta)
        orders = world["users"][target]["orders"]
        if kind == "total":
            question = f"What is the total price of all orders of {target}?"
            picked = orders
        else:
            question = f"What is the total price of the {status} orders of {target}?"
            picked = [o for o in orders if o["status"] == status]
        meta["prices"] = [o["price"] for o in picked]
        return Task(task_id, "relay", question, str(sum(meta["prices"])), meta)

    # ---- rules ---------------------------------------------------------------------------------
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        if task.meta["kind"] in UNSOLVABLE_KINDS:
            return 1.0 if gives_up(final_answer) else 0.0
        if gives_up(final_answer):
            return 0.0
        numbers = _ints(final_answer or "")
        expected = int(task.answer)
        if numbers and numbers[-1] == expected:
            return 1.0
        return 0.5 if expected in numbers else 0.0

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        if task.meta["kind"] in UNSOLVABLE_KINDS:
            if not gives_up(final_answer):
                return [0.0] * len(steps)
            return [_blocked(step, task.meta["blocker"]) for step in steps]
        return data_flow_contributions(task.question, steps, final_answer)

    # ---- demonstrations ------------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        """A solution played against the tools (their failures included), optimal or with one flaw:
        a failed call not retried, a redundant call, a detour (distractor or deprecated tool first),
        or the long path where a shorter one exists."""
        flaw = rng.choice(SUBOPTIMAL_KINDS) if rng.random() < suboptimal_share else None
        return _Demo(self, task, rng, flaw).run()

    def reference_calls(self, task: Task) -> list[dict[str, Any]]:
        """The optimal solution's messages (no flaw); what the solvability test replays."""
        return _Demo(self, task, random.Random(0), None).run()


def _listed_ids(output: str) -> list[int]:
    """The order ids of a list_orders / search_orders result (between ':' and ';')."""
    return _ints(output.split(":", 1)[1].split(";", 1)[0])


def _blocked(step: dict[str, Any], blocker: str) -> float:
    """1.0 if the step's call to ``blocker`` failed for good (not a transient 503 / 429)."""
    return float(
        any(
            c.get("name") == blocker and not c.get("ok") and not _transient(str(c.get("output", "")))
            for c in step.get("calls", [])
        )
    )


def _transient(output: str) -> bool:
    return UNAVAILABLE in output or RATE_LIMITED in output


class _Demo:
    """Plays one demonstration against the suite's tools with a fresh session state."""

    def __init__(self, suite: RelaySuite, task: Task, rng: random.Random, flaw: str | None) -> None:
        self.suite, self.task, self.rng, self.flaw = suite, task, rng, flaw
        self.state = suite.initial_state(task)
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": task.question}]
        self.skip_retry = flaw == "not_retried"

    def call(self, name: str, args: dict[str, Any], retry: bool = True, attempts: int = 6) -> str | None:
        """Call until it works (an optimal agent retries 503/429); None if it failed for good."""
        for _ in range(attempts):
            self.messages.append({"role": "assistant", "content": call_text(name, args)})
            try:
                out: str | None = str(getattr(self.suite, name)(self.state, **args))
                failed = False
            except ToolError as e:
                out, failed = f"Error: {e}", True
            self.messages.append({"role": "tool", "content": out})
            if not failed:
                return out
            if not _transient(out):
                return None  # not transient: retrying cannot help
            if self.skip_retry or not retry:
                self.skip_retry = False  # the flaw happens once
                return None
        return None

    def answer(self, text: str) -> list[dict[str, Any]]:
        self.messages.append({"role": "assistant", "content": text})
        return self.messages

    def run(self) -> list[dict[str, Any]]:
        meta = self.task.meta
        if self.flaw == "detour":
            name = self.rng.choice(["weather", "web_search", "order_history"])
            args = (
                {"name": meta["user"]}
                if name == "order_history"
                else (
                    {"city": self.rng.choice(sorted(ATLAS_WORLD))}
                    if name == "weather"
                    else {"query": self.task.question}
                )
            )
            self.call(name, args, retry=False)
        if meta["kind"] == "archive":
            self.call("order_history", {"name": meta["user"]})
            return self.answer(GIVE_UP_TEXT)
        found = self.call("find_user", {"name": meta["user"]})
        if meta["kind"] == "missing_user":
            return self.answer(GIVE_UP_TEXT)
        if found is None:
            return self.answer(GIVE_UP_TEXT)  # a failure not retried: a wrong give-up
        user_id = _ints(found)[-1]
        listed = None
        if meta["kind"] == "status_total" and self.flaw != "long_path":
            # the short path; after 3 rate-limited attempts, the long path (list every order)
            listed = self.call("search_orders", {"user": user_id, "status": meta["status"]}, attempts=3)
        if listed is not None:
            order_ids, wanted = _listed_ids(listed), None
        else:
            order_ids, page = [], 1
            while True:
                args = {"user": user_id} if page == 1 else {"user": user_id, "page": page}
                listed = self.call("list_orders", args)
                if listed is None:
                    break
                order_ids += _listed_ids(listed)
                if "last page" in listed:
                    break
                page += 1
            wanted = meta["status"] if meta["kind"] == "status_total" else None
        prices = []
        for i, order_id in enumerate(order_ids):
            record = self.call("get_order", {"order": order_id})
            if self.flaw == "redundant" and i == 0:
                self.call("get_order", {"order": order_id})
            if record is None:
                continue
            fields = record.split(": ", 1)[1].split(", ")  # item, price P, status, noise...
            if wanted is None or fields[2] == wanted:
                prices.append(int(fields[1].split()[1]))
        if not prices:
            return self.answer(GIVE_UP_TEXT)
        if len(prices) > 1:
            out = self.call("calculator", {"expression": "+".join(map(str, prices))})
            total = int(out) if out else sum(prices)
        else:
            total = prices[0]
        return self.answer(f"The answer is {total}.")


def params_dict(suite: RelaySuite) -> dict[str, Any]:
    """The suite's parameters as a plain dict (recorded beside calibration numbers)."""
    return asdict(suite.params)
