"""Training throughput: tokens/s of the FSDP2 actor update, and achieved FLOP/s against this CPU's peak.

    python benchmarks/train_throughput.py                    # embedded model and a random ~15M Qwen2
    python benchmarks/train_throughput.py --models embedded --updates 2 --batch 8

``ActorWorker.update_policy`` (the PPO actor update: forward, clipped loss, backward, AdamW step) runs
through ``workers.group.WorkerGroup`` on a local Ray cluster, for world size 1 (1 and all torch threads)
and world size 2 (gloo, 1 thread per rank: the default ``actor`` config). The batch is atlas
demonstrations encoded as episodes (prompt, tool calls, observations, answer) with their real action
masks; old log-probs come from the actor itself, advantages are random.

Counting: tokens = non-padding tokens of the batch x ``ppo_epochs`` (every token goes through forward
and backward, the loss covers action tokens only). FLOPs per update = 6 x N x tokens, with N all unique
parameters (the tied embedding counted once, for the output projection; the embedding lookup is free),
i.e. 2N forward + 4N backward per token; attention-score FLOPs (about 12 x layers x hidden x context per
token) and the optimizer are not counted, so the achieved FLOP/s is a lower bound. The peak is measured
in the same run: the best of several fp32 ``torch.matmul`` of two large square matrices (2 n^3 FLOPs)
with all threads (and with one thread, what one rank of the default config gets), before and after the
updates (on a shared machine the better of the two is the closer to the CPU's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def matmul_peak_flops(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """Best fp32 FLOP/s of ``A @ B`` (n x n) over ``repeats`` runs with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(before)


def update_batch(model_path: str, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Atlas demonstrations as a collated batch (the tensors ``update_policy`` reads, but log-probs)."""
    from dataclasses import asdict

    from transformers import AutoTokenizer

    from steprl.chat import ChatEncoder
    from steprl.protocol import collate
    from tools_env.suite import get_suite

    tok = AutoTokenizer.from_pretrained(model_path)
    suite = get_suite("atlas")
    enc = ChatEncoder(tok, [t.schema() for t in suite.tools()], suite.system_prompt)
    rng = random.Random(seed)
    trajs = [
        enc.encode_demonstration(t.task_id, suite.demonstration(t, rng, 0.35))
        for t in suite.tasks("train", batch, seed)
    ]
    b = collate(trajs, tok.pad_token_id or 0)
    data = {k: v for k, v in asdict(b).items() if isinstance(v, torch.Tensor)}
    gen = torch.Generator().manual_seed(seed)
    data["advantages"] = torch.randn(data["input_ids"].shape, generator=gen) * data["action_mask"]
    return data


def measure(
    model_path: str, world_size: int, threads: int, batch: int, updates: int, ppo_epochs: int
) -> dict[str, Any]:
    """tokens/s of ``update_policy`` for one group shape (one warm-up update, then ``updates`` timed)."""
    from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup

    t0 = time.perf_counter()
    group = WorkerGroup(
        ActorWorker, world_size, 0.5, 0, "actor", model_path=model_path, model_cfg=ModelConfig(path=model_path),
        worker_cfg=WorkerConfig(world_size=world_size, threads=threads), optim_cfg=OptimConfig(),
        algo_cfg=AlgorithmConfig(ppo_epochs=ppo_epochs, num_mini_batches=1), seed=0,
    )  # fmt: skip
    startup = time.perf_counter() - t0
    try:
        data = update_batch(model_path, batch)
        data["old_logprobs"] = group.gather_rows("compute_logprobs", data)
        group.mean_metrics("update_policy", data)  # warm-up
        t1 = time.perf_counter()
        for _ in range(updates):
            group.mean_metrics("update_policy", data)
        seconds = (time.perf_counter() - t1) / updates
        memory = max(m["peak_mb"] for m in group.call_all("peak_memory_mb"))
    finally:
        group.shutdown()
    tokens = int(data["attention_mask"].sum()) * ppo_epochs
    return {
        "world_size": world_size,
        "threads_per_rank": threads,
        "tokens_per_update": tokens,
        "action_tokens_per_update": int(data["action_mask"].sum()) * ppo_epochs,
        "seconds_per_update": seconds,
        "tokens_per_s": tokens / seconds,
        "group_startup_s": round(startup, 1),
        "peak_mb_per_rank": round(memory),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="embedded,random15m", help="embedded, random15m or model directories")
    p.add_argument("--batch", type=int, default=16, help="episodes per update")
    p.add_argument("--updates", type=int, default=3, help="timed updates per configuration")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--random-hidden", type=int, default=512)
    p.add_argument("--random-layers", type=int, default=4)
    p.add_argument("--random-intermediate", type=int, default=1536)
    p.add_argument("--random-heads", type=int, default=8)
    p.add_argument("--shapes", default=None, help="ranks x threads per rank, e.g. 1x1,1x2,2x1 (default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import ray

    from steprl.models.tiny import ensure_tiny_model

    cpus = os.cpu_count() or 1
    peak_all = matmul_peak_flops(args.matmul_n, threads=cpus)  # before Ray starts, on an idle process
    peak_one = matmul_peak_flops(args.matmul_n, threads=1)
    print(f"fp32 matmul peak ({args.matmul_n}^2): {peak_all / 1e9:.1f} GFLOP/s with {cpus} threads, "
          f"{peak_one / 1e9:.1f} GFLOP/s with 1 thread")  # fmt: skip
    shapes = [(1, 1), (1, cpus), (2, 1)] if cpus > 1 else [(1, 1), (2, 1)]
    if args.shapes:
        shapes = [(int(a), int(b)) for a, b in (x.split("x") for x in args.shapes.split(","))]
    results: list[dict[str, Any]] = []
    os.environ.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    ray.init(num_cpus=max(8, cpus), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="steprl-train-bench-") as tmp:
            for model in args.models.split(","):
                if model == "embedded":
                    path = str(ensure_tiny_model())
                elif model == "random15m":
                    from rollout_throughput import build_random_qwen2  # the sibling benchmark's builder

                    path = str(Path(tmp) / "random")
                    build_random_qwen2(Path(path), args.random_hidden, args.random_layers,
                                       args.random_intermediate, args.random_heads)  # fmt: skip
                else:
                    path = model
                params = _params(path)
                for ws, threads in shapes:
                    r = measure(path, ws, threads, args.batch, args.updates, args.ppo_epochs)
                    r.update(model=model, params=params)
                    r["flops_per_s"] = 6 * params * r["tokens_per_s"]
                    results.append(r)
                    print(f"  measured {model} world size {ws} x {threads} threads: {r['tokens_per_s']:.0f} tokens/s",
                          flush=True)  # fmt: skip
    finally:
        ray.shutdown()
    # the machine may be shared: the peak is the best of the measurements before and after the updates
    peak_all = max(peak_all, matmul_peak_flops(args.matmul_n, threads=cpus))
    peak_one = max(peak_one, matmul_peak_flops(args.matmul_n, threads=1))
    for r in results:
        r["share_of_peak_all_threads"] = r["flops_per_s"] / peak_all
    print(f"fp32 matmul peak, best before/after: {peak_all / 1e9:.1f} GFLOP/s ({cpus} threads), "
          f"{peak_one / 1e9:.1f} GFLOP/s (1 thread)")  # fmt: skip
    print(f"\nFSDP2 actor update (update_policy through WorkerGroup, gloo), {args.batch} atlas episodes per update; "
          "ratios vs world size 1 x 1 thread of the same model, measured in this run")  # fmt: skip
    print(f"{'model':10} {'params':>7} {'ranks':>5} {'thr':>3} {'tokens':>7} {'s/update':>8} {'tokens/s':>8} "
          f"{'x':>5} {'GFLOP/s':>7} {'% peak':>6} {'MB/rank':>7}")  # fmt: skip
    for r in results:
        base = next(b for b in results if b["model"] == r["model"])
        r["ratio_tokens_per_s"] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['model'][:10]:10} {r['params'] / 1e6:6.1f}M {r['world_size']:5d} {r['threads_per_rank']:3d} "
              f"{r['tokens_per_update']:7d} {r['seconds_per_update']:8.2f} {r['tokens_per_s']:8.0f} "
              f"{r['ratio_tokens_per_s']:5.2f} {r['flops_per_s'] / 1e9:7.2f} {100 * r['share_of_peak_all_threads']:6.1f} "
              f"{r['peak_mb_per_rank']:7d}")  # fmt: skip
    print(
        f"FLOPs = 6 x params x tokens per update; peak = {peak_all / 1e9:.1f} GFLOP/s (fp32 matmul, {cpus} threads)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops_all_threads": peak_all, "peak_flops_one_thread": peak_one,
                                               "results": results}, indent=1))  # fmt: skip
    return 0


def _params(path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    sys.exit(main())
