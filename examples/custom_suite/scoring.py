"""Contribution rule of the inline ``capitals`` suite: 1 for the look-up of the asked country."""

from __future__ import annotations

from typing import Any


def capital_contributions(task, steps: list[dict[str, Any]], final_answer: str | None) -> list[float]:
    country = task.meta["country"]
    return [
        1.0 if any(c.get("ok") and c.get("name") == "capital_of" and c.get("arguments") == {"country": country}
                   for c in step.get("calls", [])) else 0.0
        for step in steps
    ]  # fmt: skip
