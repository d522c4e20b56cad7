"""Win rate of run A over run B from two saved evaluation results (``python -m steprl.eval --compare``).

Tasks are matched by id; a matched pair must be the same question (same suite, split and seed), else the
comparison is refused. The pass win rate compares the saved pass scores. The judge win rate re-scores
both runs' saved steps with the ``judge`` reward source (``steprl.reward_sources``; the same registry as
``workers.reward.REWARD_SOURCES``) when it is registered and has an endpoint and a model, and compares the
judge's IsSolved the same way (ties count half). The judge grades each run's answer on its own (pointwise);
it is not asked to prefer one of two answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steprl.evaluation.metrics import pass_rate, win_rate
from steprl.evaluation.runner import row_trajectory

JUDGE_SOURCE = "judge"


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file written by ``python -m steprl.eval``; ValueError with one line when it is not."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"results file {path} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ValueError(f"results file {path} has no per-task rows (not written by steprl.eval?)")
    return data


class JudgeUnavailable(ValueError):
    """The judge cannot score: not registered, or its endpoint / model is not configured."""


def judge_pipeline(url: str = "", model: str = "") -> Any:
    """A reward pipeline scoring every component with the ``judge`` source (URL and model fall back to
    STEPRL_JUDGE_URL / STEPRL_JUDGE_MODEL); JudgeUnavailable when there is no usable judge."""
    from steprl.config import RewardConfig
    from steprl.reward_sources import REWARD_SOURCES, RewardPipeline, reward_env

    if JUDGE_SOURCE not in REWARD_SOURCES:
        raise JudgeUnavailable(f"the {JUDGE_SOURCE!r} reward source is not registered")
    cfg = RewardConfig(source=JUDGE_SOURCE, judge_url=url, judge_model=model)
    try:
        return RewardPipeline(cfg, reward_env(cfg))
    except ValueError as e:
        raise JudgeUnavailable(f"the {JUDGE_SOURCE!r} reward source is not configured: {e}") from e


def judge_scores(pipeline: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """IsSolved of each saved row according to the judge (one batch: the judge's requests run concurrently)."""
    pairs = [row_trajectory(r) for r in rows]
    trajs = pipeline.score([t for t, _ in pairs], [task for _, task in pairs])
    return {r["task_id"]: float(t.is_solved) for r, t in zip(rows, trajs, strict=True)}


def compare(
    path_a: str | Path, path_b: str | Path, judge: str = "auto", judge_url: str = "", judge_model: str = ""
) -> dict[str, Any]:
    """``judge``: ``auto`` (use the judge when it is registered and configured), ``on`` (require it), ``off``."""
    if judge not in ("auto", "on", "off"):
        raise ValueError(f"judge must be auto, on or off, got {judge!r}")
    a, b = load_results(path_a), load_results(path_b)
    rows_a = {r["task_id"]: r for r in a["rows"]}
    rows_b = {r["task_id"]: r for r in b["rows"]}
    common = sorted(set(rows_a) & set(rows_b))
    for t in common:
        if rows_a[t]["task"]["question"] != rows_b[t]["task"]["question"]:
            raise ValueError(
                f"task {t} is a different question in the two runs (different suite, split or seed?)"
            )
    if not common:
        raise ValueError("the two runs have no task in common (different suite, split or seed?)")
    scores_a = {t: rows_a[t]["pass_score"] for t in common}
    scores_b = {t: rows_b[t]["pass_score"] for t in common}
    out: dict[str, Any] = {
        "a": str(path_a),
        "b": str(path_b),
        "num_common_tasks": len(common),
        "only_in_a": len(rows_a) - len(common),
        "only_in_b": len(rows_b) - len(common),
        "pass_rate_a": pass_rate(list(scores_a.values())),
        "pass_rate_b": pass_rate(list(scores_b.values())),
        "pass": win_rate(scores_a, scores_b).to_dict(),
        "judge": None,
    }
    if judge == "off":
        return out
    try:
        pipeline = judge_pipeline(judge_url, judge_model)
    except JudgeUnavailable as e:
        if judge == "on":
            raise
        out["judge_note"] = f"no judge win rate: {e}"
        return out
    try:
        ja = judge_scores(pipeline, [rows_a[t] for t in common])
        jb = judge_scores(pipeline, [rows_b[t] for t in common])
    finally:
        pipeline.close()
    out["judge"] = {
        **win_rate(ja, jb).to_dict(),
        "pass_rate_a": pass_rate(list(ja.values())),
        "pass_rate_b": pass_rate(list(jb.values())),
    }
    return out
