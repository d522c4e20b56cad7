"""A suite written as a class, registered by importing this module (``modules:`` in suite.yaml)."""

from __future__ import annotations

import random
from typing import Any, Literal

from tools_env import Suite, Task, register_suite, tool

FACTORS = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mile": 1609.344}


@register_suite("units")
class UnitSuite(Suite):
    """Convert lengths. SuccCalling: a valid conversion; Contribution: 1 for the conversion the question asks;
    IsSolved: the last number of the answer is within 0.5% of the expected value."""

    system_prompt = "You convert lengths with the convert tool."

    @tool
    def convert(self, state: dict, value: float, source: Literal["m", "km", "cm", "mile"],
                target: Literal["m", "km", "cm", "mile"]) -> str:  # fmt: skip
        """Convert a length between units.

        Args:
            value: the number to convert
            source: unit of the value
            target: unit wanted
        """
        return f"{value * FACTORS[source] / FACTORS[target]:.4g}"

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        rng = random.Random(f"units-{split}-{seed}")
        out = []
        for i in range(n):
            value = rng.randint(2, 999) if split == "train" else rng.randint(1000, 9999)  # disjoint splits
            src, dst = rng.sample(sorted(FACTORS), 2)
            answer = f"{value * FACTORS[src] / FACTORS[dst]:.4g}"
            meta = {"value": value, "source": src, "target": dst}
            out.append(
                Task(f"units-{split}-{i}", "units", f"How many {dst} are {value} {src}?", answer, meta)
            )
        return out

    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        import re

        numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", final_answer or "")]
        return (
            1.0
            if numbers and abs(numbers[-1] - float(task.answer)) <= 0.005 * abs(float(task.answer))
            else 0.0
        )

    def contributions(self, task: Task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
        wanted = {"value": task.meta["value"], "source": task.meta["source"], "target": task.meta["target"]}
        return [1.0 if any(c.get("ok") and c.get("arguments") == wanted for c in s.get("calls", [])) else 0.0
                for s in steps]  # fmt: skip
