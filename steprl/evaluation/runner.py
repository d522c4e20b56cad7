"""Run one evaluation: decode a task suite with a checkpoint, score it, and return per-task rows.

The engine, tool environment, chat encoder and parser are built by ``workers.rollout.RolloutWorker`` (used
in-process, without Ray), so an evaluation runs exactly the code a training rollout runs. Scores come from
``workers.reward.score_trajectory`` with a registered reward source (``rule`` by default), so any source
registered there (a judge, a PRM) is an evaluation source too.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from steprl.config import DECODERS
from steprl.episode import EpisodeBudget
from steprl.evaluation.dfsdt import DFSDTConfig, run_dfsdt
from steprl.evaluation.metrics import aggregate, pass_label
from steprl.protocol import StepRecord, Trajectory
from tools_env.suite import Task, get_suite


@dataclass
class EvalSpec:
    model_path: str  # a resolved Hugging Face model directory
    model: str = ""  # as the user named it (``embedded``, a run's checkpoint directory ...)
    suite: str = "atlas"
    split: str = "test"
    num_tasks: int = 64
    seed: int = 0
    engine: str = "hf"
    tool_format: str = "hermes"
    tool_server: str = "inprocess"  # inprocess | local (a FastAPI server in its own process) | URL
    decoder: str = "cot"
    temperature: float = 0.0
    budget: EpisodeBudget = field(default_factory=EpisodeBudget)
    dfsdt: DFSDTConfig = field(default_factory=DFSDTConfig)
    reward_source: str = "rule"
    alpha: float = 1.0
    dtype: str = "float32"
    tool_prompt: str = "auto"  # model.tool_prompt: how tool schemas reach the prompt
    attn_implementation: str = "sdpa"
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.3
    threads: int = 0  # torch threads of the engine; 0: all cores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(spec: EvalSpec) -> dict[str, Any]:
    """Decode ``spec.num_tasks`` tasks, score them, and return ``{"meta", "aggregate", "rows"}``."""
    from workers.rollout import RolloutWorker

    tasks = get_suite(spec.suite).tasks(spec.split, spec.num_tasks, spec.seed)
    server = None
    url = spec.tool_server
    if spec.tool_server == "local":
        from tools_env.server import serve

        server = serve(host="127.0.0.1", port=0, background="process")
        url = server.client_url  # carries the server's random token
    engine_kwargs: dict[str, Any] = {
        "dtype": spec.dtype,
        "seed": spec.seed,
        "attn_implementation": spec.attn_implementation,
    }
    if spec.engine == "vllm":
        engine_kwargs.update(
            max_model_len=spec.max_model_len, gpu_memory_utilization=spec.gpu_memory_utilization
        )
    worker = None
    try:
        t0 = time.time()
        worker = RolloutWorker(
            spec.model_path, spec.engine, engine_kwargs, spec.tool_format, url, [spec.suite], spec.budget,
            threads=spec.threads or os.cpu_count() or 1, tool_prompt=spec.tool_prompt,
        )  # fmt: skip
        startup = time.time() - t0
        t1 = time.time()
        trajs = decode(worker, tasks, spec)
        decode_seconds = time.time() - t1
    finally:
        if worker is not None:
            worker.shutdown()
            if hasattr(worker.env, "close"):
                worker.env.close()
        if server is not None:
            server.stop()
    rows = [result_row(score(t, task, spec), task) for t, task in zip(trajs, tasks, strict=True)]
    meta = {
        **spec.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "engine_startup_seconds": round(startup, 3),
        "decode_seconds": round(decode_seconds, 3),
        "generated_tokens_per_second": sum(_search_tokens(r) for r in rows) / max(decode_seconds, 1e-9),
    }
    return {"meta": meta, "aggregate": aggregate(rows), "rows": rows}


def decode(worker: Any, tasks: list[Task], spec: EvalSpec) -> list[Trajectory]:
    if spec.decoder == "cot":
        trajs, _ = worker.rollout([t.to_dict() for t in tasks], spec.temperature, spec.seed)
        return trajs
    if spec.decoder == "dfsdt":
        return run_dfsdt(
            worker.engine, worker.env, worker.encoders, worker.parse, tasks, spec.budget, spec.dfsdt,
            spec.temperature, spec.seed,
        )  # fmt: skip
    raise ValueError(f"unknown decoder {spec.decoder!r}; known: {list(DECODERS)}")


def score(traj: Trajectory, task: Task, spec: EvalSpec) -> Trajectory:
    from workers.reward import score_trajectory

    return score_trajectory(traj, task, spec.reward_source, spec.alpha, step_grained=True)


def result_row(traj: Trajectory, task: Task) -> dict[str, Any]:
    """One task's saved result: what the metrics read, plus the steps a judge would need to re-score."""
    tool_steps = [s for s in traj.steps if not (s.is_final or s.is_reply)]
    return {
        "task_id": task.task_id,
        "task": task.to_dict(),
        "final_answer": traj.final_answer,
        "pass_score": float(traj.is_solved),
        "label": pass_label(traj.is_solved),
        "tool_success": [float(s.succ_calling) for s in tool_steps],
        "num_steps": traj.num_steps,
        "response_tokens": len(traj.response_ids),
        "generated_tokens": int(sum(traj.action_mask)),
        "end_reason": traj.end_reason,
        "reward": float(sum(traj.step_rewards)),
        "steps": [asdict(s) for s in traj.steps],
        "final_state": traj.meta.get("final_state") or {},
        "search": traj.meta.get("search"),
        "turn_scores": traj.meta.get("turn_scores"),
        "num_turns": max(1 + len(task.followups), 1 + sum(s.is_reply for s in traj.steps)),
    }


def row_trajectory(row: dict[str, Any]) -> tuple[Trajectory, Task]:
    """Rebuild the (token-free) trajectory and task of a saved row, for re-scoring by another source."""
    task = Task.from_dict(row["task"])
    traj = Trajectory(task_id=row["task_id"], prompt_ids=[], group_id=row["task_id"])
    traj.steps = [StepRecord(**s) for s in row["steps"]]
    traj.final_answer, traj.end_reason = row["final_answer"], row["end_reason"]
    traj.meta.update(suite=task.suite, final_state=row.get("final_state") or {})
    return traj, task


def _search_tokens(row: dict[str, Any]) -> int:
    return row["search"]["generated_tokens"] if row.get("search") else row["generated_tokens"]
