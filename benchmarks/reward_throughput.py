"""Reward throughput: scored trajectories/s of the reward workers, for 1 vs 2 reward Ray actors.

    python benchmarks/reward_throughput.py                        # rule + judge (fake endpoint, 50 ms)
    python benchmarks/reward_throughput.py --trajectories 64 --latency 0.02 --workers 1 2
    python benchmarks/reward_throughput.py --sources judge --judge-url http://127.0.0.1:8000/v1 \\
        --judge-model tiny-judge                                  # a judge you serve (e.g. vLLM)

Trajectories are real atlas episodes: demonstrations (a third with a suboptimal step) replayed through
the episode loop against the in-process tool environment, one per distinct task. Each configuration
gets fresh ``workers.reward.RewardWorker`` actors (so no judge reply is cached), one warm-up call that
builds the sources, then the batch is split across the actors the way ``Controller.score`` splits it
(``trajs[i::n]``) and timed end to end (Ray transfer included). The judge runs against the loopback
fake endpoint of ``steprl.reward_sources.fake_judge`` with ``--latency`` seconds per request, unless
``--judge-url`` names a real server. Ratios are against the 1-actor run of the same source, measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steprl.config import RewardConfig  # noqa: E402
from steprl.engines.replay import ReplayEngine  # noqa: E402
from steprl.protocol import Trajectory  # noqa: E402


def build_episodes(n: int, seed: int = 0) -> tuple[list[Trajectory], list[dict[str, Any]]]:
    from transformers import AutoTokenizer

    from steprl.chat import ChatEncoder
    from steprl.episode import EpisodeBudget, run_episodes
    from steprl.models.tiny import ensure_tiny_model
    from tools_env import ToolEnv, get_parser, get_suite

    atlas = get_suite("atlas")
    tok = AutoTokenizer.from_pretrained(ensure_tiny_model())
    enc = ChatEncoder(tok, [t.schema() for t in atlas.tools()], atlas.system_prompt)
    tasks = atlas.tasks("train", n, seed)
    rng = random.Random(seed)
    scripts = {
        tuple(enc.start(t.question)[1]): [
            enc.action_ids(m["content"])
            for m in atlas.demonstration(t, rng, 0.35)
            if m["role"] == "assistant"
        ]
        for t in tasks
    }
    budget = EpisodeBudget(max_turns=8, max_response_tokens=900, max_tokens_per_turn=96)
    trajs = run_episodes(
        ReplayEngine(scripts), ToolEnv(), {"atlas": enc}, get_parser("hermes"), tasks, budget
    )
    return trajs, [t.to_dict() for t in tasks]


def measure(
    cfg: RewardConfig, workers: int, trajs: list[Trajectory], tasks: list[dict[str, Any]], repeats: int
) -> dict[str, Any]:
    """Best of ``repeats`` timed scorings of ``trajs[:-1]``; the last episode is the warm-up (so none
    of the timed ones is in a judge cache)."""
    import ray

    from workers.reward import RewardWorker, merge_metrics, reward_env

    warm, warm_task = trajs[-1:], tasks[-1:]
    trajs, tasks = trajs[:-1], tasks[:-1]
    cls = ray.remote(num_cpus=0)(RewardWorker)
    actors = [cls.remote(cfg, reward_env(cfg)) for _ in range(workers)]
    try:
        ray.get([a.score.remote(warm, warm_task) for a in actors])  # build the sources
        ray.get([a.pop_metrics.remote() for a in actors])
        best = float("inf")
        for r in range(repeats):
            if r:  # fresh actors, empty caches: nothing is served from the cache
                for a in actors:
                    ray.kill(a)
                actors = [cls.remote(cfg, reward_env(cfg)) for _ in range(workers)]
                ray.get([a.score.remote(warm, warm_task) for a in actors])
                ray.get([a.pop_metrics.remote() for a in actors])
            t0 = time.perf_counter()
            parts = ray.get(
                [a.score.remote(trajs[i::workers], tasks[i::workers]) for i, a in enumerate(actors)]
            )
            best = min(best, time.perf_counter() - t0)
        metrics = merge_metrics(ray.get([a.pop_metrics.remote() for a in actors]))
    finally:
        for a in actors:
            ray.kill(a)
    scored = sum(len(p) for p in parts)
    return {
        "workers": workers,
        "trajectories": scored,
        "seconds": best,
        "trajectories_per_second": scored / best,
        "unscored": metrics.get("reward/unscored_trajectories", 0.0),
        "judge_requests": metrics.get("reward/judge/requests", 0.0),
        "cache_hits": metrics.get("reward/judge/cache_hits", 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sources", nargs="+", default=["rule", "judge"], choices=["rule", "judge"])
    p.add_argument("--latency", type=float, default=0.2, help="fake judge: seconds per request")
    p.add_argument("--judge-samples", type=int, default=3)
    p.add_argument("--judge-concurrency", type=int, default=8, help="in-flight requests per reward actor")
    p.add_argument("--judge-url", default="", help="a real OpenAI-compatible judge instead of the fake one")
    p.add_argument("--judge-model", default="fake-judge")
    p.add_argument("--judge-max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (best is kept)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)

    import ray

    from steprl.reward_sources.fake_judge import start_fake_judge

    trajs, tasks = build_episodes(args.trajectories + 1)  # + 1 warm-up episode
    steps = sum(t.num_steps for t in trajs[:-1])
    print(f"{len(trajs) - 1} atlas episodes, {steps} steps; reward actors {args.workers}")
    fake = None
    if "judge" in args.sources and not args.judge_url:
        fake = start_fake_judge(latency=args.latency)
    ray.init(num_cpus=max(4, max(args.workers) + 2), include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        for source in args.sources:
            cfg = RewardConfig(source=source)
            if source == "judge":
                cfg = RewardConfig(
                    source="judge",
                    judge_url=args.judge_url or fake.url,  # type: ignore[union-attr]
                    judge_model=args.judge_model,
                    judge_samples=args.judge_samples,
                    judge_concurrency=args.judge_concurrency,
                    judge_max_tokens=args.judge_max_tokens,
                    judge_max_observation_chars=200,
                )
            base = None
            for w in args.workers:
                row = {"source": source, **measure(cfg, w, trajs, tasks, args.repeats)}
                base = base or row["trajectories_per_second"]
                row["ratio_vs_1"] = row["trajectories_per_second"] / base
                rows.append(row)
                judge = (
                    f", {row['judge_requests']:.0f} judge requests ({args.latency * 1000:.0f} ms each)"
                    if source == "judge" and fake
                    else (f", {row['judge_requests']:.0f} judge requests" if source == "judge" else "")
                )
                print(
                    f"{source:6s} x{w} actors: {row['trajectories_per_second']:9.1f} traj/s "
                    f"({row['seconds']:.3f} s) ratio {row['ratio_vs_1']:.2f}, unscored {row['unscored']:.0f}{judge}"
                )
    finally:
        ray.shutdown()
        if fake is not None:
            fake.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
