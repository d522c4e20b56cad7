"""Arithmetic word problems solved by writing code for a sandboxed ``python`` tool (TRICE / ARPO style).

Problems come from templates with multi-digit numbers (change from a purchase, stock after shipments,
distance over two legs, leftovers after packing ...), so computing by hand is error-prone and running code
pays off. The tool runs in ``tools_env.sandbox`` (separate process, resource limits, no network). Because
the tool is called ``python`` with a ``code`` argument, the suite also works with the ``codestep`` and
``tags`` tool-call formats.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named ``python`` with a string ``code``, and the code exited with status 0
  within the sandbox limits (an exception, timeout or limit kill is a failed call).
* Contribution: 1 for a step whose printed output contains the expected answer; 0.5 for a step whose
  output first shows one of the problem's intermediate quantities; 0 otherwise.
* IsSolved: 1 if the last number in the final answer is the expected one, 0.5 if the expected number
  appears but not last (unsure), else 0.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from typing import Any

from tools_env.sandbox import SandboxLimits, run_python
from tools_env.suite import Suite, Task, register_suite
from tools_env.suites.atlas import call_text
from tools_env.tools import ToolError, tool

LIMITS = SandboxLimits(wall_time_s=5.0, cpu_time_s=2, memory_mb=256, max_output_bytes=8000)
NAMES = ["Mira", "Oskar", "Lena", "Tariq", "Yuki", "Ines", "Bruno", "Asha", "Pavel", "Noor", "Elif", "Jonas"]
ITEMS = ["pencils", "lamps", "notebooks", "cups", "tickets", "plants", "batteries", "scarves"]
SUBOPTIMAL_KINDS = ("error_then_fix", "partial_first", "premature_answer")

Step = tuple[str, str, int]  # (variable, expression, value)


def _shop(rng: random.Random) -> tuple[str, list[Step]]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    price, n = rng.randint(12, 95), rng.randint(11, 60)
    cost = price * n
    paid = (cost // 500 + 1) * 500
    q = f"A shop sells {item} at {price} coins each. {name} buys {n} {item} and pays with {paid} coins. How many coins of change does {name} get?"
    return q, [("cost", f"{price} * {n}", cost), ("change", f"{paid} - cost", paid - cost)]


def _warehouse(rng: random.Random) -> tuple[str, list[Step]]:
    boxes, per, shipped = rng.randint(23, 180), rng.randint(12, 48), rng.randint(100, 999)
    total = boxes * per
    if shipped >= total:
        shipped = total // 3
    q = f"A warehouse holds {boxes} boxes with {per} bottles in each. Then {shipped} bottles are shipped out. How many bottles remain?"
    return q, [("total", f"{boxes} * {per}", total), ("remaining", f"total - {shipped}", total - shipped)]


def _travel(rng: random.Random) -> tuple[str, list[Step]]:
    v, t, w, u = rng.randint(41, 129), rng.randint(2, 9), rng.randint(41, 129), rng.randint(2, 9)
    q = f"A train runs at {v} km/h for {t} hours, then at {w} km/h for {u} hours. How many kilometres does it cover in total?"
    steps = [("first", f"{v} * {t}", v * t), ("second", f"{w} * {u}", w * u)]
    return q, [*steps, ("distance", "first + second", v * t + w * u)]


def _savings(rng: random.Random) -> tuple[str, list[Step]]:
    name, s, weeks = rng.choice(NAMES), rng.randint(17, 95), rng.randint(12, 52)
    saved = s * weeks
    spent = rng.randint(saved // 5, saved // 2)
    q = f"{name} saves {s} coins every week for {weeks} weeks, then spends {spent} coins on a bicycle. How many coins are left?"
    return q, [("saved", f"{s} * {weeks}", saved), ("left", f"saved - {spent}", saved - spent)]


def _field(rng: random.Random) -> tuple[str, list[Step]]:
    length, width, price = rng.randint(13, 97), rng.randint(13, 97), rng.randint(3, 19)
    area = length * width
    q = f"A field is {length} m long and {width} m wide. Seed costs {price} coins per square metre. How many coins does seed for the whole field cost?"
    return q, [("area", f"{length} * {width}", area), ("cost", f"area * {price}", area * price)]


def _cartons(rng: random.Random) -> tuple[str, list[Step]]:
    eggs, per = rng.randint(1000, 9999), rng.randint(6, 30)
    full = eggs // per
    q = f"A farm packs {eggs} eggs into cartons of {per}. After filling as many full cartons as possible, how many eggs are left over?"
    return q, [("full", f"{eggs} // {per}", full), ("left_over", f"{eggs} - full * {per}", eggs - full * per)]


def _share(rng: random.Random) -> tuple[str, list[Step]]:
    friends, each, spent = rng.randint(3, 12), rng.randint(120, 980), rng.randint(10, 99)
    prize = friends * each
    q = f"{friends} friends share a prize of {prize} coins equally. Each then spends {spent} coins. How many coins does each friend have left?"
    return q, [("each", f"{prize} // {friends}", each), ("left", f"each - {spent}", each - spent)]


def _growth(rng: random.Random) -> tuple[str, list[Step]]:
    start, hours = rng.randint(3, 90), rng.randint(6, 16)
    factor = 2**hours
    q = f"A culture starts with {start} cells and doubles every hour. How many cells are there after {hours} hours?"
    return q, [("factor", f"2 ** {hours}", factor), ("cells", f"{start} * factor", start * factor)]


TEMPLATES: dict[str, Callable[[random.Random], tuple[str, list[Step]]]] = {
    "shop": _shop, "warehouse": _warehouse, "travel": _travel, "savings": _savings,
    "field": _field, "cartons": _cartons, "share": _share, "growth": _growth,
}  # fmt: skip


def numbers(text: str) -> list[float]:
    """Numbers in ``text`` (thousands separators allowed: 1,234 or 1 234 is not split)."""
    cleaned = re.sub(r"(?<=\d)[,_](?=\d{3}\b)", "", text or "")
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cleaned)]


def program(steps: list[Step]) -> str:
    return "\n".join(f"{var} = {expr}" for var, expr, _ in steps) + f"\nprint({steps[-1][0]})"


@register_suite("math")
class MathSuite(Suite):
    system_prompt = (
        "You solve arithmetic word problems. Write Python code for the python tool to compute, then answer."
    )

    def entity_tokens(self) -> list[str]:
        return sorted(NAMES + ITEMS)

    @tool
    def python(self, state: dict, code: str) -> str:
        """Run Python code in a sandbox and return what it prints (use print to see values).

        Args:
            code: the Python program to run
        """
        result = run_python(code, LIMITS)
        if not result.ok:
            trace = result.stderr.strip()[-800:]
            if result.killed_reason is None and trace:  # an exception: its traceback says it all
                raise ToolError(trace)
            raise ToolError(result.error + (f"\n{trace}" if trace else ""))
        return result.stdout.strip() or "(no output; print the values you need)"

    # ---- tasks ---------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"math-{split}-{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        while len(out) < n:
            kind = rng.choice(sorted(TEMPLATES))
            question, steps = TEMPLATES[kind](rng)
            # the split is a pure function of the question, so train and test never share one
            if ("test" if zlib.crc32(question.encode()) % 5 == 0 else "train") != split or question in seen:
                continue
            seen.add(question)
            meta = {
                "kind": kind,
                "steps": [list(s) for s in steps],
                "intermediates": [v for _, _, v in steps[:-1]],
            }
            out.append(Task(f"math-{split}-{len(out)}", "math", question, str(steps[-1][2]), meta))
        return out

    # ---- rules ---------------------------------------------------------------------------
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        found, expected = numbers(final_answer or ""), float(task.answer)
        if found and found[-1] == expected:
            return 1.0
        return 0.5 if expected in found else 0.0

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        expected = float(task.answer)
        pending = {float(v) for v in task.meta["intermediates"]}
        scores = []
        for step in steps:
            score = 0.0
            for call in step.get("calls", []):
                if not call.get("ok") or call.get("name") != "python":
                    continue
                shown = set(numbers(call.get("output", "")))
                if expected in shown:
                    score = 1.0
                elif shown & pending:
                    pending -= shown
                    score = max(score, 0.5)
            scores.append(score)
        return scores

    # ---- demonstrations ------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        steps: list[Step] = [tuple(s) for s in task.meta["steps"]]  # type: ignore[misc]
        flaw = rng.choice(SUBOPTIMAL_KINDS) if rng.random() < suboptimal_share else None
        messages: list[dict[str, Any]] = [{"role": "user", "content": task.question}]

        def turn(code: str, output: str) -> None:
            messages.append({"role": "assistant", "content": call_text("python", {"code": code})})
            messages.append({"role": "tool", "content": output})

        first_var, first_expr, first_value = steps[0]
        if flaw == "error_then_fix":
            typo = first_var + "_"
            trace = 'Traceback (most recent call last):\n  File "<sandbox>", line 2, in <module>\n'
            turn(
                f"{first_var} = {first_expr}\nprint({typo})",
                f"Error: {trace}NameError: name '{typo}' is not defined",
            )
        elif flaw in ("partial_first", "premature_answer"):
            turn(f"{first_var} = {first_expr}\nprint({first_var})", str(first_value))
            if flaw == "premature_answer":
                messages.append({"role": "assistant", "content": f"The answer is {first_value}."})
                return messages
        turn(program(steps), task.answer)
        messages.append({"role": "assistant", "content": f"The answer is {task.answer}."})
        return messages
