"""Judge annotations of trajectories (``data/reward_annotation/...``): per query, the steps as
``"Step n: {python dict}"``, per judge sample the SuccCalling/Contribution lists, and IsSolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.data.formats.common import (
    Collector,
    OnError,
    RecordError,
    Records,
    ToolCallRecord,
    call_from_literal,
    numbers,
    require,
)
from steprl.data.formats.files import iter_json_entries

_STATUS_VALUE = {"Solved": 1.0, "Unsure": 0.5, "Unsolved": 0.0}
_STEP_RE = re.compile(r"Step (\d+): (.*)\Z", re.S)
_FINAL_RE = re.compile(r"Final step: (.*)\Z", re.S)


@dataclass
class StepAnnotation:
    """Judge annotations for one trajectory, one list entry per judge sample (the paper samples k=3).

    ``succ_calling[j][t]`` in {0, 1} and ``contribution[j][t]`` in 0..5 (raw) for intermediate step t;
    ``final_answer_status[j]`` is "Solved", "Unsure" or "Unsolved".
    """

    query_id: str
    query: str
    tool_names: list[str]
    steps: list[ToolCallRecord]
    final_step: ToolCallRecord | None
    succ_calling: list[list[int]]
    contribution: list[list[float]]
    final_answer_status: list[str]
    source_line: int = 0

    def is_solved(self) -> float:
        """IsSolved averaged over judge samples (Solved=1, Unsure=0.5, Unsolved=0)."""
        if not self.final_answer_status:
            return 0.0
        return sum(_STATUS_VALUE[s] for s in self.final_answer_status) / len(self.final_answer_status)

    def step_rewards(self, alpha: float = 1.0) -> list[float]:
        """StepTool rewards: ``(alpha*SuccCalling + Contribution/5) / (1+alpha)`` per intermediate step,
        averaged over judge samples, then IsSolved for the final step."""
        out = []
        for t in range(len(self.steps)):
            vals = [
                (alpha * s[t] + c[t] / 5.0) / (1.0 + alpha)
                for s, c in zip(self.succ_calling, self.contribution, strict=True)
            ]
            out.append(sum(vals) / len(vals) if vals else 0.0)
        return [*out, self.is_solved()]


def _samples(d: Any, where: str) -> list[Any]:
    if not isinstance(d, dict) or not d:
        raise RecordError(f"{where} is not a non-empty object of judge samples")
    try:
        keys = sorted(d, key=int)
    except ValueError:
        raise RecordError(f"{where} has non-numeric sample keys") from None
    return [d[k] for k in keys]


def _status(raw: Any) -> str:
    s = str(raw).removeprefix("AnswerStatus.")
    if s not in _STATUS_VALUE:
        raise RecordError(f"unknown answer status {raw!r}")
    return s


def _parse_annotation(qid: str, d: Any, line: int) -> StepAnnotation:
    where = f"query {qid!r}"
    query = require(d, "query", str, where)
    raw_steps = require(d, "answer_steps", list, where)
    steps = []
    for t, s in enumerate(raw_steps):
        m = _STEP_RE.match(s) if isinstance(s, str) else None
        if not m or int(m.group(1)) != t + 1:
            raise RecordError(f"{where} answer_steps[{t}] does not start with 'Step {t + 1}: '")
        steps.append(call_from_literal(m.group(2), f"{where} step {t + 1}"))
    final_raw = d.get("final_step") or ""
    final = None
    if final_raw:
        m = _FINAL_RE.match(final_raw) if isinstance(final_raw, str) else None
        if not m:
            raise RecordError(f"{where} final_step does not start with 'Final step: '")
        final = call_from_literal(m.group(1), f"{where} final step")
    succ, contrib = [], []
    for j, sample in enumerate(_samples(d.get("process_reward"), f"{where} process_reward")):
        s = require(sample, "succeed_tool_calling", list, f"{where} sample {j}")
        c = require(sample, "contributions", list, f"{where} sample {j}")
        if len(s) != len(steps) or len(c) != len(steps):
            raise RecordError(f"{where} sample {j}: {len(s)}/{len(c)} scores for {len(steps)} steps")
        if any(isinstance(v, bool) or v not in (0, 1) for v in s):
            raise RecordError(f"{where} sample {j}: succeed_tool_calling must be 0/1, got {s}")
        c = numbers(c, f"{where} sample {j} contributions")
        if any(not 0 <= v <= 5 for v in c):
            raise RecordError(f"{where} sample {j}: contributions must be in 0..5, got {c}")
        succ.append([int(v) for v in s])
        contrib.append([int(v) if v.is_integer() else v for v in c])
    statuses = [_status(v) for v in _samples(d.get("is_solved"), f"{where} is_solved")]
    tools = d.get("tool_names", [])
    if not isinstance(tools, list):
        raise RecordError(f"{where} tool_names is a {type(tools).__name__}, expected a list")
    return StepAnnotation(qid, query, list(tools), steps, final, succ, contrib, statuses, line)


def read_reward_annotations(path: str | Path, on_error: OnError = "skip") -> Records[StepAnnotation]:
    """Read judge annotations (``data/reward_annotation/...``): per query, the steps as
    ``"Step n: {python dict}"``, per judge sample the SuccCalling/Contribution lists, and IsSolved."""
    out: Collector[StepAnnotation] = Collector(path, on_error)
    for qid, entry, line in iter_json_entries(path):
        out.run(line, lambda q=qid, e=entry, ln=line: _parse_annotation(q, e, ln))
    return out.out
