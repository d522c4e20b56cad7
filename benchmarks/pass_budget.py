"""The FSDP2 actor's update and log-prob forward at several pass budgets, on episode-like lengths.

    python benchmarks/pass_budget.py                          # one pass per mini-batch vs 2,500 tokens
    python benchmarks/pass_budget.py --budgets 100000 2048 3000 --repeats 7

A batch of ``--rows`` rows: the embedded model, a 130-token prompt whose first 112 tokens every row
shares (the system prompt and tool schemas of atlas), then 40-320 response tokens (seeded). One
2-rank actor group per budget (``actor.micro_batch_tokens``), 2 PPO epochs of 2 mini-batches; the
groups take turns, ``--repeats`` times, so a load change hits all of them. The first budget is the
baseline (the default 100000 is one pass per mini-batch); ratios are against it, medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def episode_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    lengths = [130 + rng.randint(40, 320) for _ in range(rows)]
    ids = torch.randint(10, 1000, (rows, max(lengths)), generator=gen)
    ids[:, :112] = ids[0, :112].clone()
    attention = torch.zeros_like(ids, dtype=torch.bool)
    for i, length in enumerate(lengths):
        attention[i, :length] = True
    action = attention.clone()
    action[:, :130] = False
    advantages = torch.randn(ids.shape, generator=gen) * action
    return {"input_ids": ids, "attention_mask": attention, "action_mask": action, "advantages": advantages}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[100_000, 2500])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import ray

    from steprl.config import StepRLConfig
    from steprl.models.tiny import ensure_tiny_model
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup

    path = str(ensure_tiny_model())
    data = episode_batch(args.rows)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    groups = {}
    for budget in args.budgets:
        cfg = StepRLConfig()
        cfg.algorithm.ppo_epochs, cfg.algorithm.num_mini_batches = 2, 2
        cfg.actor.micro_batch_tokens = budget
        groups[budget] = WorkerGroup(
            ActorWorker, 2, 0.5, 0.0, f"actor-{budget}", model_path=path, model_cfg=cfg.model,
            worker_cfg=cfg.actor, optim_cfg=cfg.optim, algo_cfg=cfg.algorithm, seed=0,
        )  # fmt: skip
    data["old_logprobs"] = groups[args.budgets[0]].gather_rows("compute_logprobs", data)
    update = {b: [] for b in groups}
    forward = {b: [] for b in groups}
    for group in groups.values():
        group.mean_metrics("update_policy", data)  # warm-up
    for r in range(args.repeats):
        for budget, group in groups.items():
            t = time.perf_counter()
            group.gather_rows("compute_logprobs", data)
            forward[budget].append(time.perf_counter() - t)
            t = time.perf_counter()
            group.mean_metrics("update_policy", data)
            update[budget].append(time.perf_counter() - t)
        print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
    base = args.budgets[0]
    print(f"\n{args.rows} rows, {int(data['attention_mask'].sum())} tokens; medians of {args.repeats}")
    print("budget   update s  x vs base  log-probs s  x vs base")
    for budget in groups:
        u, f = statistics.median(update[budget]), statistics.median(forward[budget])
        bu, bf = statistics.median(update[base]), statistics.median(forward[base])
        print(f"{budget:>7} {u:9.2f} {bu / u:9.2f}x {f:11.2f} {bf / f:9.2f}x")
    for group in groups.values():
        group.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
