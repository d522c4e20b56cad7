"""Parquet storage of trajectories: exact round trip, atomic writes, batch-wise writing."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steprl.data import (
    ParquetTrajectoryWriter,
    iter_trajectories_parquet,
    read_trajectories_parquet,
    table_to_trajectories,
    trajectories_to_table,
    write_trajectories_parquet,
)
from steprl.data.parquet_io import STEP_TYPE
from steprl.protocol import END_REASONS, StepRecord, Trajectory

WORDS = ["weather", "Paris", "é", "日本", "", "a\nb", '{"x": 1}', "\t", "🙂"]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))


def _json_value(rng: random.Random, depth: int = 0):
    kind = rng.randint(0, 6 if depth < 2 else 4)
    if kind == 0:
        return rng.randint(-(2**40), 2**40)
    if kind == 1:
        return rng.uniform(-1e6, 1e6)
    if kind == 2:
        return _text(rng)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.random()
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_text(rng) + str(i): _json_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def random_trajectory(rng: random.Random, i: int) -> Trajectory:
    n_steps = rng.choice([0, 0, 1, 2, 5])
    t = Trajectory(
        task_id=f"task-{i}", prompt_ids=[rng.randrange(0, 2**31) for _ in range(rng.randint(0, 8))]
    )
    for k in range(n_steps):
        action = [rng.randrange(0, 150_000) for _ in range(rng.randint(1, 6))]
        t.append(action, is_action=True, step=k, logprobs=[-rng.random() * 10 for _ in action])
        if rng.random() < 0.7:
            t.append([rng.randrange(0, 150_000) for _ in range(rng.randint(1, 4))], is_action=False, step=k)
    t.steps = [
        StepRecord(
            text=_text(rng),
            tool_calls=[
                {"name": _text(rng), "arguments": _json_value(rng)} for _ in range(rng.randint(0, 2))
            ],
            observation=_text(rng),
            is_final=k == n_steps - 1,
            parse_error=rng.choice([None, "", "bad json"]),
            succ_calling=rng.choice([0.0, 1.0]),
            contribution=rng.random(),
            reward=rng.uniform(-1, 1),
            info={"k": k, "extra": _json_value(rng)} if rng.random() < 0.5 else {},
        )
        for k in range(n_steps)
    ]
    t.done = rng.random() < 0.5
    t.truncated = not t.done and rng.random() < 0.5
    t.end_reason = rng.choice(END_REASONS)
    t.is_solved = rng.choice([0.0, 0.5, 1.0, rng.random()])
    t.final_answer = rng.choice([None, "", _text(rng)])
    t.group_id = rng.choice(["", f"g{i % 3}"])
    t.meta = {"seed": i, "nested": _json_value(rng)} if rng.random() < 0.7 else {}
    t.validate()
    return t


@pytest.fixture
def trajs() -> list[Trajectory]:
    rng = random.Random(1234)
    return [random_trajectory(rng, i) for i in range(40)]


def test_round_trip_exact(tmp_path: Path, trajs: list[Trajectory]) -> None:
    assert any(t.num_steps == 0 for t in trajs) and any(not t.response_ids for t in trajs)
    path = tmp_path / "t.parquet"
    write_trajectories_parquet(trajs, path)
    back = read_trajectories_parquet(path)
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]
    assert all(type(x) is float for t in back for x in t.rollout_logprobs)
    assert all(type(s.reward) is float and type(s.is_final) is bool for t in back for s in t.steps)


def test_schema_layout(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "t.parquet"
    write_trajectories_parquet(trajs, path)
    schema = pq.read_schema(path)
    assert schema.field("steps").type == pa.list_(STEP_TYPE)
    assert schema.field("response_ids").type == pa.list_(pa.int64())
    assert schema.field("meta").type == pa.string()
    assert pq.read_metadata(path).num_rows == len(trajs)
    table = pq.read_table(path)
    assert [t.to_dict() for t in table_to_trajectories(table)] == [t.to_dict() for t in trajs]
    assert trajectories_to_table(trajs).num_rows == len(trajs)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    write_trajectories_parquet([], path)
    assert read_trajectories_parquet(path) == []


def test_atomic_replace_and_failure_keeps_old_file(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "t.parquet"
    write_trajectories_parquet(trajs[:3], path)
    write_trajectories_parquet(trajs[3:5], path)
    assert [t.task_id for t in read_trajectories_parquet(path)] == ["task-3", "task-4"]
    bad = trajs[5]
    bad.meta = {"not_json": object()}
    with pytest.raises(TypeError, match="task-5: meta is not JSON-serializable"):
        write_trajectories_parquet([trajs[6], bad], path)
    assert [t.task_id for t in read_trajectories_parquet(path)] == ["task-3", "task-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_writer_batches_become_row_groups(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "sub" / "stream.parquet"
    with ParquetTrajectoryWriter(path) as w:
        for start in range(0, 40, 10):
            w.write(trajs[start : start + 10])
            assert not path.exists()  # appears only when closed
        w.write([])
    assert w.rows_written == 40
    assert pq.ParquetFile(path).num_row_groups == 4
    assert [t.to_dict() for t in iter_trajectories_parquet(path, batch_size=7)] == [
        t.to_dict() for t in trajs
    ]
    with pytest.raises(ValueError, match="closed"):
        w.write(trajs[:1])


def test_writer_exception_leaves_nothing(tmp_path: Path, trajs: list[Trajectory]) -> None:
    path = tmp_path / "stream.parquet"
    with pytest.raises(RuntimeError), ParquetTrajectoryWriter(path) as w:
        w.write(trajs[:5])
        raise RuntimeError("rollout crashed")
    assert list(tmp_path.iterdir()) == []


def test_rejects_foreign_parquet(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(ValueError, match="not a steprl trajectory file"):
        read_trajectories_parquet(path)
