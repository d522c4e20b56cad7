"""A stateful suite: bank accounts and transfers, checked on the session's final state.

Each task starts from its own accounts (``Task.meta["initial"]``) and asks for operations in words:
plain transfers, chains, "move half of X's balance", "if X has more than N ...", "make X and Y equal".
Some need balances read first, and nothing in the final answer matters: the state does. Mistakes are
not undone by themselves, so a wrong transfer must be repaired with another one.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named a real tool, had valid arguments and executed (a transfer from an
  unknown account, of a non-positive amount or beyond the balance fails).
* Contribution: 1 for a step with an executed transfer or deposit that is one of the task's expected
  operations not done before, or with the first balance look-up of an account the task depends on;
  0 otherwise (look-ups of unrelated accounts, unexpected or repeated operations).
* IsSolved: 1 if the final balances equal the expected balances exactly, else 0 (a state is either
  right or wrong; this suite never answers "unsure").
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from tools_env.suite import Suite, Task, register_suite
from tools_env.suites.atlas import call_text
from tools_env.tools import ToolError, tool

HOLDERS = ["ana", "bram", "chen", "dita", "emil", "fatou", "goran", "hana", "ivo", "jade", "kofi", "lina"]
KINDS = ("transfer", "chain", "half", "conditional", "equalize")
SUBOPTIMAL_KINDS = ("needless_lookup", "wrong_transfer_repaired", "premature_answer")

Op = tuple[str, dict[str, Any]]  # ("transfer", {"source", "target", "amount"}) or ("deposit", {...})


def _apply(balances: dict[str, int], op: Op) -> None:
    name, args = op
    if name == "transfer":
        balances[args["source"]] -= args["amount"]
        balances[args["target"]] += args["amount"]
    else:
        balances[args["account"]] += args["amount"]


def _transfer(source: str, target: str, amount: int) -> Op:
    return ("transfer", {"source": source, "target": target, "amount": amount})


def _plan(
    kind: str, names: list[str], bal: dict[str, int], rng: random.Random
) -> tuple[str, list[Op], list[str]]:
    """The request in words, the operations that fulfil it and the balances it depends on."""
    a, b, c = names[0], names[1], names[2]
    if kind == "transfer":
        x = rng.randint(5, bal[a] - 1)
        return f"Transfer {x} from {a}'s account to {b}'s account.", [_transfer(a, b, x)], []
    if kind == "chain":
        x = rng.randint(5, bal[a] - 1)
        y = rng.randint(5, bal[b] + x - 1)
        text = f"Transfer {x} from {a} to {b}, then transfer {y} from {b} to {c}."
        return text, [_transfer(a, b, x), _transfer(b, c, y)], []
    if kind == "half":
        return f"Move half of {a}'s balance to {b}.", [_transfer(a, b, bal[a] // 2)], [a]
    if kind == "conditional":
        threshold, x, y = rng.randint(50, 400), rng.randint(5, 40), rng.randint(5, 90)
        op = _transfer(a, b, x) if bal[a] > threshold else ("deposit", {"account": a, "amount": y})
        text = f"If {a} has more than {threshold}, transfer {x} from {a} to {b}; otherwise deposit {y} into {a}'s account."
        return text, [op], [a]
    # equalize: the richer of the two pays half the difference (made even and non-zero here)
    if bal[a] == bal[b]:
        bal[b] += 2 * rng.randint(5, 50)
    if (bal[a] - bal[b]) % 2:
        bal[b] += 1
    rich, poor = (a, b) if bal[a] > bal[b] else (b, a)
    text = f"Transfer money between {a} and {b} so that both end up with the same balance."
    return text, [_transfer(rich, poor, (bal[rich] - bal[poor]) // 2)], [a, b]


@register_suite("bank")
class BankSuite(Suite):
    system_prompt = (
        "You operate a bank's accounts with the tools. Do exactly what the customer asks, then confirm."
    )

    def entity_tokens(self) -> list[str]:
        return list(HOLDERS)

    def initial_state(self, task: Task) -> dict[str, Any]:
        return {"balances": dict(task.meta["initial"]), "log": []}

    @tool
    def list_accounts(self, state: dict) -> str:
        """List the account holders of the bank."""
        return ", ".join(sorted(state["balances"]))

    @tool
    def get_balance(self, state: dict, account: str) -> str:
        """Current balance of an account.

        Args:
            account: the account holder's name
        """
        self._known(state, account)
        return str(state["balances"][account])

    @tool
    def transfer(self, state: dict, source: str, target: str, amount: int) -> str:
        """Transfer money from one account to another.

        Args:
            source: account to take the money from
            target: account to pay into
            amount: a positive whole number
        """
        self._known(state, source)
        self._known(state, target)
        if source == target:
            raise ToolError("source and target are the same account")
        if amount <= 0:
            raise ToolError("amount must be positive")
        if state["balances"][source] < amount:
            raise ToolError(f"insufficient funds: {source} has {state['balances'][source]}")
        _apply(state["balances"], _transfer(source, target, amount))
        state["log"].append(["transfer", source, target, amount])
        return f"Transferred {amount} from {source} to {target}."

    @tool
    def deposit(self, state: dict, account: str, amount: int) -> str:
        """Deposit cash into an account.

        Args:
            account: the account holder's name
            amount: a positive whole number
        """
        self._known(state, account)
        if amount <= 0:
            raise ToolError("amount must be positive")
        state["balances"][account] += amount
        state["log"].append(["deposit", account, amount])
        return f"Deposited {amount} into {account}."

    @staticmethod
    def _known(state: dict, account: str) -> None:
        if account not in state["balances"]:
            raise ToolError(f"no account {account!r}; accounts: {', '.join(sorted(state['balances']))}")

    # ---- tasks ---------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"bank-{split}-{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        while len(out) < n:
            kind = rng.choice(KINDS)
            names = rng.sample(HOLDERS, rng.randint(3, 5))
            initial = {h: rng.randint(20, 600) for h in names}
            request, ops, needs = _plan(kind, names, initial, rng)
            signature = f"{request}|{sorted(initial.items())}"
            if ("test" if zlib.crc32(signature.encode()) % 5 == 0 else "train") != split or signature in seen:
                continue
            seen.add(signature)
            expected = dict(initial)
            for op in ops:
                _apply(expected, op)
            meta = {
                "kind": kind,
                "initial": initial,
                "expected": expected,
                "ops": [list(o) for o in ops],
                "needs": needs,
            }
            out.append(Task(f"bank-{split}-{len(out)}", "bank", request, "done", meta))
        return out

    # ---- rules ---------------------------------------------------------------------------
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        return 1.0 if state.get("balances") == task.meta["expected"] else 0.0

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        pending_ops = [list(o) for o in task.meta["ops"]]
        pending_reads = set(task.meta["needs"])
        scores = []
        for step in steps:
            score = 0.0
            for call in step.get("calls", []):
                if not call.get("ok"):
                    continue
                name, args = call.get("name"), call.get("arguments") or {}
                if name == "get_balance" and args.get("account") in pending_reads:
                    pending_reads.discard(args["account"])
                    score = 1.0
                elif [name, args] in pending_ops:
                    pending_ops.remove([name, args])
                    score = 1.0
            scores.append(score)
        return scores

    # ---- demonstrations ------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        state = self.initial_state(task)
        flaw = rng.choice(SUBOPTIMAL_KINDS) if rng.random() < suboptimal_share else None
        plan: list[Op] = [("get_balance", {"account": a}) for a in task.meta["needs"]]
        ops: list[Op] = [(o[0], dict(o[1])) for o in task.meta["ops"]]
        if flaw == "needless_lookup":
            other = [h for h in task.meta["initial"] if h not in task.meta["needs"]]
            plan.insert(
                0, ("get_balance", {"account": rng.choice(other)}) if other else ("list_accounts", {})
            )
        if flaw == "wrong_transfer_repaired" and ops[0][0] == "transfer":
            src, dst, amount = ops[0][1]["source"], ops[0][1]["target"], ops[0][1]["amount"]
            if state["balances"][dst] >= amount:  # pay the wrong way round, then undo it
                plan += [_transfer(dst, src, amount), _transfer(src, dst, amount)]
        if flaw == "premature_answer":
            ops = ops[:-1]
        plan += ops
        messages: list[dict[str, Any]] = [{"role": "user", "content": task.question}]
        for name, args in plan:
            messages.append({"role": "assistant", "content": call_text(name, args)})
            try:
                observation = str(getattr(self, name)(state, **args))
            except ToolError as e:
                observation = f"Error: {e}"
            messages.append({"role": "tool", "content": observation})
        messages.append({"role": "assistant", "content": "Done: the requested operations are complete."})
        return messages
