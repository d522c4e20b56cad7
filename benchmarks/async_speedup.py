"""Asynchronous (one-step-off-policy) rollouts against synchronous ones, measured in the same run.

    python benchmarks/async_speedup.py                          # default recipe, 6 iterations each
    python benchmarks/async_speedup.py --iterations 4 --model runs/results/sft/checkpoints/sft/actor

Both modes run ``python -m steprl.main`` with the same recipe, seed, model and budget, one after the
other; only ``trainer.async_rollout`` differs. Reported per mode: mean seconds per iteration over
iterations 2..N (iteration 1 of the asynchronous mode generates its batch synchronously: there is no
earlier iteration to overlap with), training episodes per second, the rollout time the trainer still
waited for, the training reward of the first and last iterations, and the held-out pass rate at the
end. The speed-up is synchronous seconds per iteration / asynchronous seconds per iteration.
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


def run_mode(async_rollout: bool, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    run_dir = root / ("async" if async_rollout else "sync")
    cmd = [
        sys.executable,
        "-m",
        "steprl.main",
        f"recipe={args.recipe}",
        f"model.path={args.model}",
        f"sft.enabled={str(args.model == 'embedded' and args.sft).lower()}",
        f"trainer.async_rollout={str(async_rollout).lower()}",
        f"trainer.total_iterations={args.iterations}",
        f"trainer.seed={args.seed}",
        "trainer.eval_start=false",
        "trainer.logger=[jsonl]",
        f"data.test_tasks={args.test_tasks}",
        f"trainer.run_dir={run_dir}",
        *args.override,
    ]
    t0 = time.time()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in rows if "time/iteration" in r]
    timed = [r for r in iters if r["step"] >= 2] or iters
    per_it = sum(r["time/iteration"] for r in timed) / len(timed)
    episodes = sum(r["train/episodes"] for r in timed)
    return {
        "mode": "async" if async_rollout else "sync",
        "seconds_per_iteration": per_it,
        "episodes_per_second": episodes / sum(r["time/iteration"] for r in timed),
        "rollout_wait_seconds": sum(r["time/rollout"] for r in timed) / len(timed),
        "staleness": [r.get("async/staleness", 0.0) for r in iters],
        "is_weight_mean": [round(r.get("offpolicy/is_weight_mean", 1.0), 4) for r in iters],
        "reward_first": iters[0]["train/reward"],
        "reward_last": iters[-1]["train/reward"],
        "pass_first": iters[0]["train/pass_rate"],
        "pass_last": iters[-1]["train/pass_rate"],
        "heldout_pass": summary["pass_rate_after_rl"],
        "wall_seconds": time.time() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="steptool")
    ap.add_argument("--model", default="embedded", help="embedded, or a model / SFT checkpoint directory")
    ap.add_argument("--sft", action="store_true", help="run the SFT cold start first (embedded model only)")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-tasks", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both modes")
    args = ap.parse_args(argv)
    if args.iterations < 2:
        ap.error("--iterations must be >= 2 (iteration 1 has nothing to overlap with)")
    if args.model != "embedded":
        args.model = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory(prefix="steprl-async-") as tmp:
        root = args.out.resolve() if args.out else Path(tmp)
        results = []
        for mode in (False, True):
            print(
                f"running {'async' if mode else 'sync'} mode ({args.iterations} iterations) ...", flush=True
            )
            results.append(run_mode(mode, args, root))
    sync, asyn = results
    print(
        "\n| mode | s / iteration (2..N) | episodes/s | rollout wait s / it | train reward it 1 -> N "
        "| train pass it 1 -> N | held-out pass | vs sync |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['mode']} | {r['seconds_per_iteration']:.1f} | {r['episodes_per_second']:.2f} | "
            f"{r['rollout_wait_seconds']:.1f} | {r['reward_first']:.3f} -> {r['reward_last']:.3f} | "
            f"{r['pass_first']:.3f} -> {r['pass_last']:.3f} | {r['heldout_pass']:.3f} | "
            f"{sync['seconds_per_iteration'] / r['seconds_per_iteration']:.2f}x |"
        )
    print(f"\nasync staleness per iteration: {asyn['staleness']}; IS weight mean: {asyn['is_weight_mean']}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
