"""The embedded default suite: multi-step questions over a bundled table of fictional countries.

Each task needs 2-4 tool calls (look facts up, compute, answer). Distractor tools (``weather``,
``web_search``) and a lookup ``field`` argument make tool choice matter, and the demonstrations
contain a configurable share of suboptimal steps (a distractor call, a redundant lookup, a wrong
field, or answering before computing): the situation step-grained rewards were made for.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named a real tool, had valid arguments and ran without error.
* Contribution: 1 for a lookup of a (country, field) the answer needs, the first time it is made;
  1 for a calculator call whose result is the expected answer; 0 otherwise.
* IsSolved: 1 if the last integer in the final answer is the expected one, 0.5 if the expected
  number appears but is not the last one (unsure), else 0.
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
import zlib
from typing import Any, Literal

from tools_env.suite import Suite, Task, register_suite
from tools_env.tools import ToolError, tool

_SYLLABLES = [
    "zor",
    "vel",
    "mar",
    "tan",
    "kri",
    "lo",
    "sa",
    "dun",
    "ba",
    "rel",
    "qui",
    "pra",
    "nor",
    "gal",
    "es",
    "ti",
]
NUMERIC_FIELDS = ("population", "area")
KINDS = ("offset", "sum2", "diff2", "sum3")
SUBOPTIMAL_KINDS = ("distractor", "redundant", "wrong_field", "premature_answer")


def _world(num_countries: int = 24, seed: int = 1234) -> dict[str, dict[str, Any]]:
    """The bundled table: fixed for every split so that train and test ask about the same world."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < num_countries:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize() + rng.choice(
            ["ia", "or", "and", "a"]
        )
        if name not in names:
            names.append(name)
    languages = ["Velish", "Tarnic", "Oskan", "Lumeric", "Draven"]
    return {n: _draw_facts(rng, n, languages) for n in names}


def _draw_facts(rng: random.Random, name: str, languages: list[str]) -> dict[str, Any]:
    return {
        "population": rng.randint(10, 99),
        "area": rng.randint(10, 99),
        "capital": name[:3] + rng.choice(["ville", "burg", "port"]),
        "language": rng.choice(languages),
    }


WORLD = _world()


def shuffled_world(rng: random.Random) -> dict[str, dict[str, Any]]:
    """The bundled countries with freshly drawn facts: the same task shapes, none of the same answers."""
    languages = sorted({row["language"] for row in WORLD.values()})
    return {n: _draw_facts(rng, n, languages) for n in WORLD}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.USub: operator.neg}


def safe_arithmetic(expression: str) -> int | float:
    """Evaluate + - * on numbers without eval(); anything else is an error."""

    def ev(node: ast.AST) -> int | float:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ToolError(f"unsupported expression {expression!r}; use numbers with + - *")

    if len(expression) > 200:
        raise ToolError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"cannot parse expression {expression!r}") from e
    return ev(tree.body)


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """The exact text of a Hermes tool call, as the demonstrations write it."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class GeneralTools:
    """Tools a suite offers beside its own: the calculator its chains need, and two distractors."""

    @tool
    def calculator(self, state: dict, expression: str) -> str:
        """Compute an arithmetic expression with + - *."""
        return str(safe_arithmetic(expression))

    @tool
    def weather(self, state: dict, city: str) -> str:
        """Current weather in a city."""
        h = zlib.crc32(city.encode())
        return f"{['sunny', 'cloudy', 'rainy'][h % 3]}, {h % 30} C"

    @tool
    def web_search(self, state: dict, query: str) -> str:
        """Search the web."""
        return "No results."


@register_suite("atlas")
class AtlasSuite(GeneralTools, Suite):
    system_prompt = "You answer questions about countries. Use the tools, then give the answer."
    world: dict[str, dict[str, Any]] = WORLD  # the bundled table; ``with_world`` swaps it (pretraining)

    def with_world(self, world: dict[str, dict[str, Any]]) -> AtlasSuite:
        """A copy of the suite over another table with the same country names."""
        other = type(self)()
        other.world = world
        return other

    def entity_tokens(self) -> list[str]:
        return sorted(self.world)

    @tool
    def lookup(
        self, state: dict, country: str, field: Literal["population", "area", "capital", "language"]
    ) -> str:
        """Look up one field of a country in the atlas (population in thousands, area in km2)."""
        if country not in self.world:
            raise ToolError(f"no country named {country!r} in the atlas")
        return str(self.world[country][field])

    # ---- tasks ---------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"atlas-{split}-{seed}")
        names = sorted(self.world)
        out: list[Task] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10_000:
                raise ValueError(f"atlas has fewer than {n} distinct {split} tasks for kinds {KINDS}")
            kind = rng.choice(KINDS)
            field = rng.choice(NUMERIC_FIELDS)
            countries = rng.sample(names, {"offset": 1, "sum2": 2, "diff2": 2, "sum3": 3}[kind])
            if kind == "diff2":
                countries.sort(key=lambda c: -self.world[c][field])
                if self.world[countries[0]][field] == self.world[countries[1]][field]:
                    continue
            offset = rng.randint(2, 9) if kind == "offset" else 0
            signature = f"{kind}|{field}|{','.join(countries)}|{offset}"
            # the split is a pure function of the question, so train and test never share one
            if ("test" if zlib.crc32(signature.encode()) % 5 == 0 else "train") != split or signature in seen:
                continue
            seen.add(signature)
            out.append(self._make_task(kind, field, countries, offset, split, len(out)))
        return out

    def _make_task(
        self, kind: str, field: str, countries: list[str], offset: int, split: str, i: int
    ) -> Task:
        values = [self.world[c][field] for c in countries]
        if kind == "offset":
            question, expression = (
                f"What is the {field} of {countries[0]} plus {offset}?",
                f"{values[0]}+{offset}",
            )
        elif kind == "diff2":
            question = f"How much larger is the {field} of {countries[0]} than that of {countries[1]}?"
            expression = f"{values[0]}-{values[1]}"
        else:
            listed = ", ".join(countries[:-1]) + f" and {countries[-1]}"
            question, expression = f"What is the total {field} of {listed}?", "+".join(map(str, values))
        answer = safe_arithmetic(expression)
        meta = {"kind": kind, "field": field, "countries": countries, "expression": expression}
        return Task(f"atlas-{split}-{i}", "atlas", question, str(answer), meta)

    # ---- rules ---------------------------------------------------------------------------
    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        numbers = _ints(final_answer or "")
        expected = int(task.answer)
        if numbers and numbers[-1] == expected:
            return 1.0
        return 0.5 if expected in numbers else 0.0

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        needed = {(c, task.meta["field"]) for c in task.meta["countries"]}
        found: set[tuple[str, str]] = set()
        scores = []
        for step in steps:
            score = 0.0
            for call in step.get("calls", []):
                if not call.get("ok"):
                    continue
                args = call.get("arguments") or {}
                if call["name"] == "lookup":
                    key = (args.get("country"), args.get("field"))
                    if key in needed and key not in found:
                        found.add(key)
                        score = 1.0
                elif call["name"] == "calculator" and _ints(call.get("output", "")) == [int(task.answer)]:
                    score = 1.0
            scores.append(score)
        return scores

    # ---- demonstrations ------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        field, countries = task.meta["field"], task.meta["countries"]
        plan: list[tuple[str, dict[str, Any]]] = [
            ("lookup", {"country": c, "field": field}) for c in countries
        ]
        flaw = rng.choice(SUBOPTIMAL_KINDS) if rng.random() < suboptimal_share else None
        if flaw == "distractor":
            plan.insert(
                0, rng.choice([("weather", {"city": countries[0]}), ("web_search", {"query": task.question})])
            )
        elif flaw == "redundant":
            plan.insert(rng.randint(1, len(plan)), plan[0])
        elif flaw == "wrong_field":
            other = [f for f in ("population", "area", "capital", "language") if f != field]
            plan.insert(0, ("lookup", {"country": countries[0], "field": rng.choice(other)}))
        messages: list[dict[str, Any]] = [{"role": "user", "content": task.question}]
        for name, args in plan:
            messages.append({"role": "assistant", "content": call_text(name, args)})
            messages.append({"role": "tool", "content": str(getattr(self, name)({}, **args))})
        if flaw == "premature_answer":
            messages.append(
                {"role": "assistant", "content": f"The answer is {self.world[countries[0]][field]}."}
            )
            return messages
        expression = task.meta["expression"]
        messages.append({"role": "assistant", "content": call_text("calculator", {"expression": expression})})
        messages.append({"role": "tool", "content": str(safe_arithmetic(expression))})
        messages.append({"role": "assistant", "content": f"The answer is {task.answer}."})
        return messages
