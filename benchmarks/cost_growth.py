"""Iteration time against episodes per iteration and model size, with each stage's share.

    python benchmarks/cost_growth.py                                   # embedded: 16, 64, 256 episodes
    python benchmarks/cost_growth.py --models embedded,smollm2 --episodes 16 64
    python benchmarks/cost_growth.py --runs runs/my-smollm2-run       # add rows from finished runs

Each configuration is the default StepTool recipe (critic and reference included, vLLM, the FSDP2 ranks
of the recipe) with the SFT cold start off (its cost does not grow with the RL batch), ``--iterations``
iterations of ``tasks x 4`` episodes, and one held-out task (the final evaluation is not timed). The
first iteration is warm-up and not counted; the table gives the mean seconds per iteration of the others,
seconds per episode and the share of each stage (``time/*`` in ``metrics.jsonl``: rollout with tools,
reward, forward = old log-probs, reference and values, update = critic and actor PPO epochs, sync =
weights to the engines, other = the controller). ``--runs`` reads any finished run directory the same
way, so a larger run's cost can be read beside the measured ones (its model and batch come from its
``config.yaml``). Use it to predict a run: cost per episode is the slope, start-up is apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.peer_trl import resolve_model  # noqa: E402

SAMPLES = 4
SHARES = ("rollout", "reward", "advantage", "update", "sync", "overhead")
LABELS = {"advantage": "forward", "overhead": "other"}


def run_config(model_path: str, episodes: int, iterations: int, run_dir: Path, extra: list[str]) -> Path:
    """The default recipe for ``iterations`` iterations of ``episodes`` episodes (SFT off), in a subprocess."""
    tasks = max(1, episodes // SAMPLES)
    cmd = [
        sys.executable, "-m", "steprl.main", f"model.path={model_path}", "sft.enabled=false",
        "trainer.eval_start=false", "data.test_tasks=1", "rollout.eval_samples=1",
        f"trainer.total_iterations={iterations}", f"trainer.tasks_per_iteration={tasks}",
        f"rollout.group_size={SAMPLES}", f"data.train_tasks={max(tasks * iterations, 64)}",
        "trainer.logger=[jsonl]", f"trainer.run_dir={run_dir}", *extra,
    ]  # fmt: skip
    log = run_dir.parent / f"{run_dir.name}.log"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"run failed ({' '.join(cmd[3:])}), log {log}:\n{tail}")
    return run_dir


def read_run(run_dir: Path) -> dict[str, Any]:
    """Mean seconds per iteration after the first, per episode, and stage shares of a finished run."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    iters = [r for r in rows if "time/iteration" in r]
    if len(iters) < 2:
        raise ValueError(f"{run_dir}: {len(iters)} timed iterations; need at least 2 (the first is warm-up)")
    timed = iters[1:]
    total = sum(r["time/iteration"] for r in timed)
    episodes = sum(r.get("train/episodes", 0) for r in timed) / len(timed)
    shares = {s: sum(r.get(f"time/{s}", 0.0) for r in timed) / total for s in SHARES}
    return {
        "run": str(run_dir), "model": Path(str(cfg.model.path)).name, "recipe": str(cfg.recipe),
        "episodes": episodes, "iterations": len(timed), "seconds": total / len(timed),
        "seconds_per_episode": total / len(timed) / max(episodes, 1), "shares": shares,
    }  # fmt: skip


def render(results: list[dict[str, Any]]) -> str:
    head = ["model", "recipe", "episodes / iteration", "s / iteration", "s / episode"]
    head += [f"{LABELS.get(s, s)} %" for s in SHARES]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [r["model"], r["recipe"], f"{r['episodes']:.0f}", f"{r['seconds']:.1f}"]
        cells += [f"{r['seconds_per_episode']:.3f}"] + [f"{100 * r['shares'][s]:.0f}" for s in SHARES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="embedded", help="embedded, smollm2 or model directories")
    p.add_argument("--episodes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--iterations", type=int, default=3, help="per configuration; the first is warm-up")
    p.add_argument("--runs", nargs="*", default=[], help="finished run directories to read as rows")
    p.add_argument("--steprl-args", default="", help="extra overrides for every run, space separated")
    p.add_argument("--out", default=None, help="keep run directories here (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.iterations < 2:
        p.error("--iterations must be >= 2 (the first is warm-up)")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="steprl-cost-"))
    out.mkdir(parents=True, exist_ok=True)
    results = [read_run(Path(r)) for r in args.runs]
    for name in args.models.split(",") if args.models else []:
        path = resolve_model(name)
        if path is None:
            print(f"{name}: not available here (skipped)", flush=True)
            continue
        for n in args.episodes:
            t0 = time.time()
            run_dir = run_config(path, n, args.iterations, out / f"{name}-{n}", args.steprl_args.split())
            results.append({**read_run(run_dir), "model": name})
            print(
                f"{name}, {n} episodes: {results[-1]['seconds']:.1f} s / iteration ({time.time() - t0:.0f} s)"
            )
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
