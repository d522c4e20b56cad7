"""The results table as text: the table, the verdict, failure modes, Figure 4, curves, calibration.

Pure rendering of what ``results_table.py`` collected; the doc blocks it writes sit between markers so
that the hand-written reading around them is kept.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from results_setup import (
    CAL_BEGIN,
    CAL_END,
    CALIBRATION_TARGETS,
    FAILURE_KINDS,
    LABELS,
    REPO,
    ROWS,
    SUITES,
    markers,
    mean_std,
)


def plot(rows: dict[str, dict[str, Any]], path: Path, suite: str = "atlas") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, recipe in ROWS:
        r = rows.get(recipe)
        if not r or not r["curves"]:
            continue
        steps = sorted(set.intersection(*(set(c) for c in r["curves"])))
        stats = [mean_std([c[s] for c in r["curves"]]) for s in steps]
        mean = [m for m, _ in stats]
        ax.plot(steps, mean, marker="o", markersize=3, label=label)
        ax.fill_between(steps, [m - sd for m, sd in stats], [m + sd for m, sd in stats], alpha=0.15)
    ax.set_xlabel("iteration (64 training episodes each)")
    ax.set_ylabel("training pass rate (sampled)")
    ax.set_title(f"steprl, {suite} suite: mean and one std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_means(r: dict[str, Any]) -> list[float]:
    """Per seed: the training pass rate averaged over its iterations (how fast it learned)."""
    return [sum(c.values()) / len(c) for c in r["curves"] if c]


def verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Does StepTool beat PPO (final reward) and SFT by more than the spread (the two stds added)?"""
    lines = []
    if "steptool" not in rows:
        return lines
    comparisons = [
        ("ppo_final", "PPO (final reward)", "held-out pass rate", lambda r: r["pass"]),
        ("sft", "SFT", "held-out pass rate", lambda r: r["pass"]),
        ("ppo_final", "PPO (final reward)", "training pass rate, mean of iterations", curve_means),
    ]
    for other, label, what, values in comparisons:
        if other not in rows or not values(rows[other]):
            continue
        (st_m, st_s), (m, s) = mean_std(values(rows["steptool"])), mean_std(values(rows[other]))
        diff, spread = st_m - m, st_s + s
        outcome = "beats it by more than" if diff > spread else "does NOT beat it by more than"
        lines.append(
            f"- StepTool vs {label}, {what}: {st_m:.3f} - {m:.3f} = {diff:+.3f}; spread (std + std) "
            f"{spread:.3f}: StepTool {outcome} the spread."
        )
    return lines


def render_failures(modes: dict[str, dict[str, Any]], tasks: int = 64) -> list[str]:
    if not modes:
        return []
    head = " | ".join(FAILURE_KINDS.values())
    lines = [
        f"Where episodes fail (`python -m steprl.eval`, T=1, {tasks} held-out tasks per seed; shares of episodes):",
        "",
        f"| policy | episodes | {head} | non-contributing steps / episode | tool calls / episode "
        "| gives up, solvable task | gives up, unsolvable task |",
        "| --- | --- | " + " | ".join("---" for _ in FAILURE_KINDS) + " | --- | --- | --- | --- |",
    ]
    for recipe, m in modes.items():
        cells = " | ".join(f"{m[k]:.3f}" for k in FAILURE_KINDS)
        give_up = " | ".join(_share(m.get(k)) for k in ("give_up_solvable", "give_up_unsolvable"))
        steps = _share(m.get("steps"), "{:.2f}")
        lines.append(
            f"| {LABELS[recipe]} | {int(m['episodes'])} | {cells} | {m['wasted_steps']:.2f} | {steps} | {give_up} |"
        )
    return [*lines, ""]


def _share(value: float | None, fmt: str = "{:.3f}") -> str:
    """A cell for a measure some analyses lack (older files) or that has no episodes (nan): ``-``."""
    return "-" if value is None or value != value else fmt.format(value)


def render_by_index(modes: dict[str, dict[str, Any]], max_index: int = 8) -> list[str]:
    """The Figure 4 analogue: tool-call success by call index, with the episodes behind each cell."""
    if not modes:
        return []
    depth = min(max_index, max(len(m["by_index"]) for m in modes.values()))
    lines = [
        "Tool-call success by call index (StepTool's Figure 4; same episodes; success rate, episodes "
        "that made that many calls in brackets):",
        "",
        "| policy | " + " | ".join(f"call {k}" for k in range(1, depth + 1)) + " |",
        "| --- | " + " | ".join("---" for _ in range(depth)) + " |",
    ]
    for recipe, m in modes.items():
        cells = [f"{c['success_rate']:.3f} ({c['count']})" for c in m["by_index"][:depth]]
        cells += ["-"] * (depth - len(cells))
        lines.append(f"| {LABELS[recipe]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_critic_fit(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The critic's explained variance of its targets (before each update), mean over iterations, per
    recipe with a critic: is the value estimate good enough to assign credit with?"""
    fitted = {recipe: r["critic_fit"] for recipe, r in rows.items() if r.get("critic_fit")}
    if not fitted:
        return []
    lines = [
        "Critic fit (`critic_explained_variance`, mean over the iterations of each seed; 1 is perfect, 0 "
        "no better than the targets' mean):",
        "",
        "| method | explained variance | seeds with it |",
        "| --- | --- | --- |",
    ]
    for recipe, fits in fitted.items():
        m, s = mean_std(fits)
        lines.append(f"| {LABELS[recipe]} | {m:.3f} ± {s:.3f} | {len(fits)} |")
    return [*lines, ""]


def render(
    rows: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    plot_path: Path,
    doc: Path,
    modes: dict[str, dict[str, Any]],
) -> str:
    setup = SUITES[args.suite]
    begin, end = markers(setup.section)
    suite_flag = "" if args.suite == "atlas" else f" --suite {args.suite}"
    lines = [
        begin,
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/results_table.py{suite_flag} "
        f"--iterations {args.iterations} --seeds {' '.join(map(str, args.seeds))}`"
        f" (run directories under `{args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}`).",
        "",
        f"| method | recipe | held-out pass (T=1, {eval_size(rows)}) | greedy pass | tool-call success "
        "| training pass, mean of iterations | training episodes | seeds | minutes / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, recipe in ROWS:
        r = rows.get(recipe)
        if not r:
            lines.append(f"| {label} | `{recipe}` | not run | | | | | | |")
            continue
        cells = []
        for key in ("pass", "greedy", "tool"):
            m, s = mean_std(r[key])
            cells.append(f"{m:.3f} ± {s:.3f}")
        # how fast it learned: the training pass rate averaged over the iterations (area under the curve)
        if curve_means(r):
            m, s = mean_std(curve_means(r))
            cells.append(f"{m:.3f} ± {s:.3f}")
        else:
            cells.append("-")
        minutes = f"{mean_std(r['seconds'])[0] / 60:.1f}" if r.get("seconds") else "-"
        seeds = ",".join(map(str, r["seeds"]))
        lines.append(f"| {label} | `{recipe}` | {' | '.join(cells)} | {r['budget']} | {seeds} | {minutes} |")
    lines += [
        "",
        *verdict(rows),
        "",
        *render_failures(modes, setup.eval_tasks),
        *(render_by_index(modes) if setup.by_index else []),
        *render_critic_fit(rows),
        f"![learning curves]({os.path.relpath(plot_path, doc.parent)})",
        "",
        end,
    ]
    return "\n".join(lines)


def eval_size(rows: dict[str, dict[str, Any]]) -> str:
    """``samples x tasks`` of the held-out evaluation, read back from a run's config."""
    for r in rows.values():
        if r.get("eval"):
            samples, tasks = r["eval"]
            return f"{samples} x {tasks}"
    return "?"


def render_calibration(summary: dict[str, Any], config: Any, suite: str, command: str) -> tuple[str, bool]:
    """The calibration block of docs/suites.md from the SFT start's run, and whether it is on target."""
    from tools_env.suite import get_suite

    target = CALIBRATION_TARGETS[suite]
    low, high = target["tool_success"]
    tool, greedy = summary["tool_success_after_rl"], summary["greedy_pass_rate_after_rl"]
    sampled = summary["pass_rate_after_rl"]
    n = int(config.data.test_tasks) * int(config.rollout.eval_samples)
    ok_tool, ok_greedy = low <= tool <= high, greedy <= target["greedy_max"]
    params = getattr(get_suite(suite), "params", None)
    lines = [
        CAL_BEGIN.format(suite=suite),
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `{command}` (the SFT start of the results table):",
        "",
        "| quantity | SFT start | target |",
        "| --- | --- | --- |",
        f"| tool-call success (held-out, T=1, {n} episodes) | {tool:.3f} | {low}-{high}: "
        f"{'met' if ok_tool else 'NOT met'} |",
        f"| greedy pass rate ({config.data.test_tasks} tasks) | {greedy:.3f} | <= {target['greedy_max']}: "
        f"{'met' if ok_greedy else 'NOT met'} |",
        f"| sampled pass rate (T=1, {n} episodes) | {sampled:.3f} | - |",
        "",
        f"SFT: {config.sft.num_demos} demonstrations, {config.sft.suboptimal_share:.0%} with a suboptimal step, "
        f"lr {config.sft.lr}, {config.sft.epochs} epoch(s); budget {config.rollout.max_turns} turns, "
        f"{config.rollout.max_response_tokens} response tokens, {config.rollout.max_tokens_per_turn} per turn"
        + (f"; suite parameters `{params}`" if params is not None else "")
        + ".",
        "",
        CAL_END.format(suite=suite),
    ]
    return "\n".join(lines), ok_tool and ok_greedy


def write_doc(doc: Path, block: str, section: str = "", bounds: tuple[str, str] | None = None) -> None:
    """Replace the generated block of ``section`` (or between ``bounds``) in ``doc`` (appended if
    missing; the doc is created with a heading if it does not exist). Other blocks and hand-written
    text are kept."""
    begin, end = bounds or markers(section)
    text = doc.read_text() if doc.exists() else "# Results in miniature\n"
    if begin not in text or end not in text:
        text = text.rstrip() + "\n\n" + begin + "\n" + end + "\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(head + block + tail)
