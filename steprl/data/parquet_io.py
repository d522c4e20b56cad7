"""Parquet storage for ``steprl.protocol.Trajectory``: one row per trajectory, exact round trip.

Why: rollouts are expensive; storing them token-exact (ids, masks, step indices, log-probs, step
records) lets offline training, debugging and evaluation reuse them without re-tokenizing.

Layout: list columns for the token-level arrays, a ``list<struct>`` column ``steps`` (tool_calls and
info as JSON text), scalar columns for the rest, ``meta`` as JSON text. ``tool_calls``, ``info`` and
``meta`` must be JSON-serializable (JSON turns tuples into lists and non-string keys into strings).
Files appear atomically: they are written to a temporary file in the same directory, then renamed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from steprl.protocol import StepRecord, Trajectory

SCHEMA_KEY = b"steprl.trajectory_schema"
SCHEMA_VERSION = b"1"

STEP_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("tool_calls", pa.string()),  # JSON
        ("observation", pa.string()),
        ("is_final", pa.bool_()),
        ("parse_error", pa.string()),  # nullable
        ("succ_calling", pa.float64()),
        ("contribution", pa.float64()),
        ("reward", pa.float64()),
        ("info", pa.string()),  # JSON
        ("turn", pa.int64()),  # the user turn of a conversation (0 = the question)
        ("is_reply", pa.bool_()),  # answered a user turn that was not the last
    ]
)

SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("prompt_ids", pa.list_(pa.int64())),
        ("response_ids", pa.list_(pa.int64())),
        ("action_mask", pa.list_(pa.int8())),
        ("obs_mask", pa.list_(pa.int8())),
        ("step_index", pa.list_(pa.int64())),
        ("rollout_logprobs", pa.list_(pa.float64())),
        ("steps", pa.list_(STEP_TYPE)),
        ("done", pa.bool_()),
        ("truncated", pa.bool_()),
        ("end_reason", pa.string()),
        ("is_solved", pa.float64()),
        ("final_answer", pa.string()),  # nullable
        ("group_id", pa.string()),
        ("meta", pa.string()),  # JSON
    ],
    metadata={SCHEMA_KEY: SCHEMA_VERSION},
)


def _dumps(value: Any, what: str, task_id: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{task_id}: {what} is not JSON-serializable: {e}") from None


def _step_row(s: StepRecord, task_id: str) -> dict[str, Any]:
    return {
        "text": s.text,
        "tool_calls": _dumps(s.tool_calls, "steps[].tool_calls", task_id),
        "observation": s.observation,
        "is_final": s.is_final,
        "parse_error": s.parse_error,
        "succ_calling": s.succ_calling,
        "contribution": s.contribution,
        "reward": s.reward,
        "info": _dumps(s.info, "steps[].info", task_id),
        "turn": s.turn,
        "is_reply": s.is_reply,
    }


def _to_row(t: Trajectory) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "prompt_ids": t.prompt_ids,
        "response_ids": t.response_ids,
        "action_mask": t.action_mask,
        "obs_mask": t.obs_mask,
        "step_index": t.step_index,
        "rollout_logprobs": t.rollout_logprobs,
        "steps": [_step_row(s, t.task_id) for s in t.steps],
        "done": t.done,
        "truncated": t.truncated,
        "end_reason": t.end_reason,
        "is_solved": t.is_solved,
        "final_answer": t.final_answer,
        "group_id": t.group_id,
        "meta": _dumps(t.meta, "meta", t.task_id),
    }


def _from_row(r: dict[str, Any]) -> Trajectory:
    steps = [
        StepRecord(
            text=s["text"],
            tool_calls=json.loads(s["tool_calls"]),
            observation=s["observation"],
            is_final=s["is_final"],
            parse_error=s["parse_error"],
            succ_calling=s["succ_calling"],
            contribution=s["contribution"],
            reward=s["reward"],
            info=json.loads(s["info"]),
            turn=s.get("turn") or 0,  # files written before conversations have neither field
            is_reply=bool(s.get("is_reply")),
        )
        for s in r["steps"]
    ]
    return Trajectory(
        task_id=r["task_id"],
        prompt_ids=r["prompt_ids"],
        response_ids=r["response_ids"],
        action_mask=r["action_mask"],
        obs_mask=r["obs_mask"],
        step_index=r["step_index"],
        rollout_logprobs=r["rollout_logprobs"],
        steps=steps,
        done=r["done"],
        truncated=r["truncated"],
        end_reason=r["end_reason"],
        is_solved=r["is_solved"],
        final_answer=r["final_answer"],
        group_id=r["group_id"],
        meta=json.loads(r["meta"]),
    )


def trajectories_to_table(trajs: Iterable[Trajectory]) -> pa.Table:
    """An Arrow table (one row per trajectory) in the steprl trajectory schema."""
    return pa.Table.from_pylist([_to_row(t) for t in trajs], schema=SCHEMA)


def table_to_trajectories(table: pa.Table) -> list[Trajectory]:
    """Trajectories from an Arrow table in the steprl trajectory schema."""
    _check_schema(table.schema, "table")
    return [_from_row(r) for r in table.to_pylist()]


def _check_schema(schema: pa.Schema, where: str) -> None:
    version = (schema.metadata or {}).get(SCHEMA_KEY)
    if version is None:
        raise ValueError(f"{where}: not a steprl trajectory file (no {SCHEMA_KEY.decode()} metadata)")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{where}: trajectory schema version {version.decode()}, this reader knows {SCHEMA_VERSION.decode()}"
        )
    missing = [f.name for f in SCHEMA if f.name not in schema.names]
    if missing:
        raise ValueError(f"{where}: missing trajectory columns {missing}")


class ParquetTrajectoryWriter:
    """Write trajectories batch by batch (one row group per ``write`` call); the file appears at
    ``path`` atomically on a clean close, and nothing appears if the block raises.

    Parquet files cannot be appended to once closed: to add data later, write a new file.
    """

    def __init__(self, path: str | Path, *, compression: str = "zstd") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, SCHEMA, compression=compression)
        self.rows_written = 0

    def write(self, trajs: Iterable[Trajectory]) -> None:
        """Append one batch as a row group (an empty batch writes nothing)."""
        if self._writer is None:
            raise ValueError(f"{self.path}: writer is closed")
        table = trajectories_to_table(trajs)
        if table.num_rows:
            self._writer.write_table(table)
            self.rows_written += table.num_rows

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop what was written; ``path`` is left untouched."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetTrajectoryWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_trajectories_parquet(trajs: Iterable[Trajectory], path: str | Path) -> None:
    """Write trajectories to ``path`` atomically (temporary file, then ``os.replace``)."""
    with ParquetTrajectoryWriter(path) as writer:
        writer.write(trajs)


def iter_trajectories_parquet(path: str | Path, batch_size: int = 1024) -> Iterator[Trajectory]:
    """Stream trajectories from a file without loading it whole."""
    pf = pq.ParquetFile(path)
    _check_schema(pf.schema_arrow, str(path))
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield _from_row(row)


def read_trajectories_parquet(path: str | Path) -> list[Trajectory]:
    """All trajectories of a file written by ``write_trajectories_parquet``/``ParquetTrajectoryWriter``."""
    return list(iter_trajectories_parquet(path))
