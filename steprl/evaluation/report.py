"""Readable tables (rich) of an evaluation result and of a comparison; also saved as plain text."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def result_tables(result: dict[str, Any]) -> list[Table]:
    meta, agg = result["meta"], result["aggregate"]
    title = (
        f"{meta['model'] or meta['model_path']} on {meta['suite']}/{meta['split']} "
        f"({agg['num_tasks']} tasks, {meta['decoder']}, {meta['engine']})"
    )
    summary = Table(title=title, show_header=True)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    labels = agg["labels"]
    rows = [
        ("pass rate (solved 1, unsure 0.5, unsolved 0)", agg["pass_rate"]),
        (
            "solved / unsure / unsolved",
            " / ".join(str(labels.get(k, 0)) for k in ("solved", "unsure", "unsolved")),
        ),
        ("tool-call success rate (all calls)", agg["tool_success_rate"]),
        ("mean steps per episode", agg["mean_steps"]),
        ("mean tool steps per episode", agg["mean_tool_calls"]),
        ("mean response tokens per episode", agg["mean_response_tokens"]),
        ("mean generated tokens per episode", agg["mean_generated_tokens"]),
        ("end reasons", ", ".join(f"{k} {v}" for k, v in agg["end_reasons"].items())),
    ]
    if "turns" in agg:
        t = agg["turns"]
        rows += [
            ("conversations: per-turn pass rate", t["turn_pass_rate"]),
            ("conversations: whole-conversation pass rate", t["conversation_pass_rate"]),
            (
                "conversations: pass rate at user turn 1, 2, ...",
                " / ".join(f"{x['pass_rate']:.2f}" for x in t["turn_pass_by_index"]),
            ),
        ]
    if "search" in agg:
        s = agg["search"]
        rows += [
            ("dfsdt: accepted answer share", s["accepted_share"]),
            (
                "dfsdt: mean model calls / backtracks per task",
                f"{s['model_calls']:.2f} / {s['backtracks']:.2f}",
            ),
            ("dfsdt: mean generated tokens per task (whole tree)", s["generated_tokens"]),
        ]
    for name, value in rows:
        summary.add_row(name, _fmt(value))
    per_index = Table(title="tool-call success by index (StepTool Fig. 4)")
    per_index.add_column("call #", justify="right")
    per_index.add_column("episodes", justify="right")
    per_index.add_column("success rate", justify="right")
    for r in agg["tool_success_by_index"]:
        per_index.add_row(str(r["index"]), str(r["count"]), f"{r['success_rate']:.3f}")
    return [summary, per_index] if agg["tool_success_by_index"] else [summary]


def compare_table(cmp: dict[str, Any]) -> Table:
    table = Table(title=f"win rate of A over B on {cmp['num_common_tasks']} common tasks")
    for col in ("scored by", "win rate A", "wins", "ties", "losses", "pass rate A", "pass rate B"):
        table.add_column(col, justify="right" if col != "scored by" else "left")
    p = cmp["pass"]
    table.add_row("rule pass score", _fmt(p["win_rate"]), str(p["wins"]), str(p["ties"]), str(p["losses"]),
                  _fmt(cmp["pass_rate_a"]), _fmt(cmp["pass_rate_b"]))  # fmt: skip
    if cmp.get("judge"):
        j = cmp["judge"]
        table.add_row("judge", _fmt(j["win_rate"]), str(j["wins"]), str(j["ties"]), str(j["losses"]),
                      _fmt(j["pass_rate_a"]), _fmt(j["pass_rate_b"]))  # fmt: skip
    table.caption = f"A = {cmp['a']}\nB = {cmp['b']}" + (
        f"\n{cmp['judge_note']}" if cmp.get("judge_note") else ""
    )
    return table


def render(tables: list[Table]) -> str:
    """Print the tables and return them as plain text (for a ``.txt`` beside the JSON)."""
    console = Console(record=True, width=110)
    for t in tables:
        console.print(t)
    return console.export_text()
