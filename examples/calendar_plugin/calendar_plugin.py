"""A calendar whose state is live Python objects, for the conversational suite in suite.yaml.

Written against docs/tools_env.md only: the tools are plain functions bound to the JSON schemas in
suite.yaml (their first parameter ``state`` receives the session state), the state is a ``Calendar``
object, ``snapshot`` gives the checkers a JSON view of it, and the per-turn check and the final
checker read the task's ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools_env import ToolError

OPEN_HOURS = range(9, 18)


@dataclass
class Booking:
    booking_id: int
    day: str
    hour: int
    title: str
    invited: list[str] = field(default_factory=list)


@dataclass
class Calendar:
    bookings: dict[int, Booking] = field(default_factory=dict)
    closed: bool = False

    def taken(self, day: str) -> set[int]:
        return {b.hour for b in self.bookings.values() if b.day == day}


# ---- tools (bound to the schemas in suite.yaml) ------------------------------------------------
def free_slots(state: dict, day: str) -> str:
    cal: Calendar = state["calendar"]
    return ", ".join(str(h) for h in OPEN_HOURS if h not in cal.taken(day))


def book(state: dict, day: str, hour: int, title: str) -> str:
    cal: Calendar = state["calendar"]
    if hour in cal.taken(day):
        raise ToolError(f"{day} {hour}:00 is taken")
    booking_id = max(cal.bookings, default=0) + 1
    cal.bookings[booking_id] = Booking(booking_id, day, hour, title)
    return f"Booked #{booking_id}: {title} on {day} at {hour}."


def cancel(state: dict, booking_id: int) -> str:
    cal: Calendar = state["calendar"]
    if booking_id not in cal.bookings:
        raise ToolError(f"no booking #{booking_id}")
    del cal.bookings[booking_id]
    return f"Cancelled #{booking_id}."


def list_bookings(state: dict, day: str) -> str:
    cal: Calendar = state["calendar"]
    found = [f"#{b.booking_id} {b.title} at {b.hour}" for b in cal.bookings.values() if b.day == day]
    return "; ".join(found) or "nothing booked"


def invite(state: dict, booking_id: int, emails: list[str]) -> str:
    cal: Calendar = state["calendar"]
    if booking_id not in cal.bookings:
        raise ToolError(f"no booking #{booking_id}")
    cal.bookings[booking_id].invited += emails
    return f"Invited {len(emails)}."


# ---- state hooks ------------------------------------------------------------------------------
def initial_state(task) -> dict[str, Any]:
    cal = Calendar()
    for i, (day, hour, title) in enumerate(task.meta.get("booked", []), start=1):
        cal.bookings[i] = Booking(i, day, hour, title)
    return {"calendar": cal}


def snapshot(task, state: dict) -> dict[str, str]:
    """The JSON view the checkers see: ``{"mon-10": "dentist", ...}``."""
    return {f"{b.day}-{b.hour}": b.title for b in state["calendar"].bookings.values()}


def close_state(task, state: dict) -> None:
    state["calendar"].closed = True


# ---- rules ------------------------------------------------------------------------------------
def turn_check(task, turn: int, answer: str | None, state: dict, steps: list[dict]) -> float:
    """1 if the calendar after user turn ``turn`` is the expected one and a turn that needs nothing
    made no call."""
    if state != task.meta["expected"][turn]:
        return 0.0
    if turn in task.meta.get("no_call_turns", []) and any(s["calls"] for s in steps):
        return 0.0
    return 1.0


def all_turns_right(task, final_answer: str | None, state: dict, steps: list[dict]) -> float:
    """IsSolved: every user turn passed (the replies' snapshots are in the steps' ``info``)."""
    last = len(task.followups)
    for s in steps:
        if s["is_reply"]:
            turn_steps = [
                x["info"] for x in steps if x["turn"] == s["turn"] and not (x["is_reply"] or x["is_final"])
            ]
            if turn_check(task, s["turn"], s["info"]["answer"], s["info"]["turn_state"], turn_steps) < 1:
                return 0.0
    final_steps = [x["info"] for x in steps if x["turn"] == last and not x["is_final"]]
    return turn_check(task, last, final_answer, state, final_steps)


def contributions(task, steps: list[dict], final_answer: str | None) -> list[float]:
    """1 for a step whose calls changed the calendar (a booking or a cancellation that ran), else 0."""
    return [
        1.0 if any(c["ok"] and c["name"] in ("book", "cancel") for c in s["calls"]) else 0.0 for s in steps
    ]
