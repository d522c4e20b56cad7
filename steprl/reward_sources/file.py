"""The ``file`` source: annotations that come with the data, looked up by ``task_id``.

Two formats (docs/rewards.md):

* ``steptool_json``: the published StepTool reward annotations (keyed by query id; per judge sample
  0/1 SuccCalling and 0..5 Contribution lists, and an answer status), read with
  ``steprl.data.read_reward_annotations`` and averaged over the samples;
* ``jsonl``: one object per line, ``{"task_id", "succ_calling": [..], "contribution": [..],
  "is_solved"}`` with values already in [0, 1] (``is_solved`` may also be Solved / Unsure / Unsolved).

A trajectory without an annotation, or whose annotation has a different number of steps, is an error
(``reward.file_missing=error``, the default: a silent zero would train on a wrong reward) or is
recorded unscored (``reward.file_missing=unscored``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steprl.algorithms.rewards import average_judge_samples, contribution_from_annotation, is_solved_score
from steprl.protocol import Trajectory
from steprl.reward_sources.base import RewardSource, SourceScores, register_reward_source, tool_steps
from tools_env.suite import Task

FILE_FORMATS = ("auto", "steptool_json", "jsonl")


class AnnotationError(ValueError):
    """A trajectory has no usable annotation (with ``reward.file_missing=error``)."""


def file_format(path: str | Path, fmt: str = "auto") -> str:
    if fmt not in FILE_FORMATS:
        raise ValueError(f"reward.file_format must be one of {FILE_FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    return "jsonl" if str(path).endswith((".jsonl", ".ndjson")) else "steptool_json"


def _unit_list(v: Any, what: str, where: str) -> list[float]:
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise ValueError(f"{where}: {what} must be a list of numbers")
    if any(not 0.0 <= x <= 1.0 for x in v):
        raise ValueError(f"{where}: {what} values must be in [0, 1], got {v}")
    return [float(x) for x in v]


def read_jsonl_annotations(path: str | Path) -> dict[str, SourceScores]:
    """``task_id -> SourceScores`` from the JSONL format; a bad line raises naming ``path:line``."""
    out: dict[str, SourceScores] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(d, dict) or not isinstance(d.get("task_id"), str):
                raise ValueError(f"{where}: each line must be an object with a string task_id")
            succ = _unit_list(d.get("succ_calling"), "succ_calling", where)
            contrib = _unit_list(d.get("contribution"), "contribution", where)
            if len(succ) != len(contrib):
                raise ValueError(
                    f"{where}: {len(succ)} succ_calling values for {len(contrib)} contribution values"
                )
            solved = d.get("is_solved")
            try:
                solved = None if solved is None else is_solved_score(solved)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            out[d["task_id"]] = SourceScores(
                succ, contrib, solved, meta={"annotation": f"{Path(path).name}:{n}"}
            )
    return out


def read_steptool_annotations(path: str | Path) -> dict[str, SourceScores]:
    """``query id -> SourceScores`` from the published annotation JSON, averaged over judge samples."""
    from steprl.data import read_reward_annotations

    out: dict[str, SourceScores] = {}
    for ann in read_reward_annotations(path, on_error="skip"):
        succ = average_judge_samples([[float(v) for v in s] for s in ann.succ_calling])
        contrib = average_judge_samples(
            [[contribution_from_annotation(v) for v in c] for c in ann.contribution]
        )
        out[ann.query_id] = SourceScores(
            succ_calling=succ,  # type: ignore[arg-type]
            contribution=contrib,  # type: ignore[arg-type]
            is_solved=ann.is_solved(),
            meta={
                "annotation": f"{Path(path).name}:{ann.source_line}",
                "judge_samples": len(ann.succ_calling),
            },
        )
    return out


@register_reward_source("file")
class FileSource(RewardSource):
    def __init__(self, cfg: Any, env: Any) -> None:
        super().__init__(cfg, env)
        if cfg.file_missing not in ("error", "unscored"):
            raise ValueError(f"reward.file_missing must be error or unscored, got {cfg.file_missing!r}")
        path = Path(cfg.file_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"reward.file_path: no annotation file at {cfg.file_path!r}")
        fmt = file_format(path, cfg.file_format)
        self.path = path
        self.annotations = read_jsonl_annotations(path) if fmt == "jsonl" else read_steptool_annotations(path)
        self.missing = 0

    def _lookup(self, traj: Trajectory) -> SourceScores:
        ann = self.annotations.get(traj.task_id)
        n = len(tool_steps(traj))
        if ann is None:
            return SourceScores(unscored=f"no annotation for task_id {traj.task_id!r} in {self.path}")
        assert ann.succ_calling is not None
        if len(ann.succ_calling) != n:
            return SourceScores(
                unscored=f"annotation of {traj.task_id!r} has {len(ann.succ_calling)} steps, the trajectory {n}"
            )
        return SourceScores(
            list(ann.succ_calling), list(ann.contribution or []), ann.is_solved, meta=dict(ann.meta)
        )

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        out = [self._lookup(t) for t in trajs]
        bad = [s.unscored for s in out if s.unscored]
        self.missing += len(bad)
        if bad and self.cfg.file_missing == "error":
            raise AnnotationError(
                f"{bad[0]} ({len(bad)} of {len(trajs)} trajectories; set reward.file_missing=unscored to go on)"
            )
        return out

    def pop_metrics(self) -> dict[str, float]:
        out = {"file/missing": float(self.missing)}
        self.missing = 0
        return out
