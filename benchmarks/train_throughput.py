"""Training throughput: the FSDP2 actor and critic updates as a share of this CPU's matmul peak in their dtype.

    python benchmarks/train_throughput.py                                   # SmolLM2 (if built), fp32 and bf16
    python benchmarks/train_throughput.py --models embedded --updates 2 --batch 8 --dtypes float32

``ActorWorker.update_policy`` (forward, clipped PPO loss, backward, AdamW step) and
``CriticWorker.update_critic`` (forward, clipped value loss, backward, AdamW step) run through
``workers.group.WorkerGroup`` on a local Ray cluster, for the group shapes ``--shapes`` (ranks x torch
threads per rank; 0 threads = the default, cores / ranks) and each ``--dtypes`` (``model.dtype``: the
compute dtype; master weights, gradients' reduction and AdamW stay fp32). The batch is atlas
demonstrations encoded as episodes (prompt, tool calls, observations, answer) with their real action
masks; old log-probs / values come from the workers themselves, advantages and returns are random.

Counting the FLOPs an update performs usefully (forward 1x, backward 2x, so 3 x the forward's):
- every non-padding token through the decoder: 2 x N_body (the layers' matmul weights);
- attention scores and their use, causal, over the tokens before each one: 4 x d_attn x (t + 1) per layer;
- the actor's output projection (2 x vocab x hidden) at the positions it is computed for (from the first
  response token on: log-probs of the prompt are not computed); the critic's scalar head.
The embedding lookup, norms, activations and the optimizer are not counted: the share is a lower bound.
The peak is measured in the same run: the best of several ``torch.matmul`` of two n x n matrices in each
dtype with all threads, before and after the updates (the better of the two on a shared machine).
"""

from __future__ import annotations

import argparse
import itertools
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


def matmul_peak_flops(
    n: int = 2048, repeats: int = 5, threads: int | None = None, dtype: str = "float32"
) -> float:
    """Best FLOP/s of ``A @ B`` (n x n, ``dtype``) over ``repeats`` runs with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(before)


def model_shape(path: str) -> dict[str, int]:
    """Parameter counts the FLOP count needs: decoder-layer matmul weights, and the output projection."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    body = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "body": body,
        "head": cfg.vocab_size * cfg.hidden_size,
        "hidden": cfg.hidden_size,
        "d_attn": cfg.num_attention_heads * head_dim,
        "layers": cfg.num_hidden_layers,
    }


def update_flops(
    shape: dict[str, int], data: dict[str, torch.Tensor], role: str, prefix_runs: int | None = None
) -> float:
    """Useful FLOPs of one pass (forward + backward) over ``data`` by ``role`` (see the module docstring).

    ``prefix_runs``: with prefix sharing, how often the rows' shared prefix is actually computed (once per
    call on each rank) instead of once per row; those rows' prefix tokens are not counted.
    """
    from steprl.modeling import first_used_column, usable_prefix

    attn = data["attention_mask"].bool()
    tokens = int(attn.sum())
    ctx = float((attn.long().cumsum(-1) * attn).sum())  # sum over tokens of (t + 1)
    if prefix_runs is not None:  # the prefix the workers share: the actor's ends before its first logit
        keep_from = first_used_column(data["action_mask"]) - 1 if role == "actor" else None
        prefix = usable_prefix(data["input_ids"], data["attention_mask"], keep_from)
        skipped = max(0, attn.shape[0] - prefix_runs)
        tokens -= skipped * prefix
        ctx -= skipped * prefix * (prefix + 1) / 2
    fwd = 2 * shape["body"] * tokens + 4 * shape["d_attn"] * shape["layers"] * ctx
    if role == "actor":
        start = first_used_column(data["action_mask"])
        fwd += 2 * shape["head"] * int(attn[:, start - 1 :].sum())
    else:
        fwd += 2 * shape["hidden"] * tokens
    return 3 * fwd


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
    model_path: str,
    role: str,
    dtype: str,
    world_size: int,
    threads: int,
    batch: int,
    updates: int,
    ppo_epochs: int,
    share_prefix: bool = True,
) -> dict[str, Any]:
    """Seconds per update of ``role`` for one group shape (one warm-up update, then ``updates`` timed)."""
    from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
    from steprl.modeling import auto_threads, pass_rows, shard_rows
    from workers.fsdp import ActorWorker, CriticWorker
    from workers.group import WorkerGroup

    cls, method = (ActorWorker, "update_policy") if role == "actor" else (CriticWorker, "update_critic")
    t0 = time.perf_counter()
    group = WorkerGroup(
        cls, world_size, 0.5, 0, role, model_path=model_path, model_cfg=ModelConfig(path=model_path, dtype=dtype),
        worker_cfg=WorkerConfig(world_size=world_size, threads=threads, share_prefix=share_prefix),
        optim_cfg=OptimConfig(),
        algo_cfg=AlgorithmConfig(ppo_epochs=ppo_epochs, num_mini_batches=1), seed=0,
    )  # fmt: skip
    startup = time.perf_counter() - t0
    try:
        data = update_batch(model_path, batch)
        if role == "actor":
            data["old_logprobs"] = group.gather_rows("compute_logprobs", data)
        else:
            data["old_values"] = group.gather_rows("compute_values", data)
            gen = torch.Generator().manual_seed(1)
            data["value_mask"] = data["action_mask"]
            data["returns"] = torch.rand(data["input_ids"].shape, generator=gen) * data["action_mask"]
        group.mean_metrics(method, data)  # warm-up
        t1 = time.perf_counter()
        for _ in range(updates):
            group.mean_metrics(method, data)
        seconds = (time.perf_counter() - t1) / updates
        memory = max(m["peak_mb"] for m in group.call_all("peak_memory_mb"))
        micro = int(group.info[0]["micro_batch_tokens"])
    finally:
        group.shutdown()
    tokens = int(data["attention_mask"].sum()) * ppo_epochs
    return {
        "role": role,
        "dtype": dtype,
        "world_size": world_size,
        "threads_per_rank": auto_threads(threads, world_size),
        "tokens_per_update": tokens,
        "action_tokens_per_update": int(data["action_mask"].sum()) * ppo_epochs,
        "seconds_per_update": seconds,
        "tokens_per_s": tokens / seconds,
        "group_startup_s": round(startup, 1),
        "peak_mb_per_rank": round(memory),
        "share_prefix": share_prefix,
        # forward passes over the whole batch (each rank runs its shard in passes of micro_batch_tokens)
        "passes": world_size * len(pass_rows(shard_rows(data, world_size)[0], micro)),
        # how often the rows' shared prefix is computed: once per rank and call (steprl.prefix_cache; every
        # shard of this batch holds at least two rows, so the ranks agree to share)
        "prefix_runs": world_size,
        "_data": data,
    }


def resolve(model: str, tmp: str, args: argparse.Namespace) -> str | None:
    from steprl.models.tiny import ensure_tiny_model

    if model == "embedded":
        return str(ensure_tiny_model())
    if model == "smollm2":
        found = [p for p in sorted((Path.home() / ".cache/steprl/models").glob("smollm2-135m-instruct-*"))
                 if (p / "config.json").exists()]  # fmt: skip
        return str(found[-1]) if found else None
    if model == "random15m":
        from rollout_throughput import build_random_qwen2  # the sibling benchmark's builder

        path = str(Path(tmp) / "random")
        build_random_qwen2(Path(path), args.random_hidden, args.random_layers,
                           args.random_intermediate, args.random_heads)  # fmt: skip
        return path
    return model if Path(model).is_dir() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2", help="embedded, smollm2, random15m or model directories")
    p.add_argument("--roles", default="actor,critic")
    p.add_argument("--dtypes", default="float32,bfloat16", help="model.dtype values (compute dtype)")
    p.add_argument("--batch", type=int, default=16, help="episodes per update")
    p.add_argument("--updates", type=int, default=3, help="timed updates per configuration")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--random-hidden", type=int, default=512)
    p.add_argument("--random-layers", type=int, default=4)
    p.add_argument("--random-intermediate", type=int, default=1536)
    p.add_argument("--random-heads", type=int, default=8)
    p.add_argument("--shapes", default="1x0,2x0", help="ranks x threads per rank (0: cores / ranks)")
    p.add_argument(
        "--share-prefix", default="on,off", help="prefix sharing (worker share_prefix): on, off or both"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import ray

    cpus = os.cpu_count() or 1
    dtypes = args.dtypes.split(",")
    peaks = {d: matmul_peak_flops(args.matmul_n, threads=cpus, dtype=d) for d in dtypes}  # before Ray starts
    shares = [{"on": True, "off": False}[x] for x in args.share_prefix.split(",")]
    shapes = [(int(a), int(b)) for a, b in (x.split("x") for x in args.shapes.split(","))]
    results: list[dict[str, Any]] = []
    os.environ.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    ray.init(num_cpus=max(8, cpus), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="steprl-train-bench-") as tmp:
            for model in args.models.split(","):
                path = resolve(model, tmp, args)
                if path is None:
                    print(f"{model}: no model directory, skipped")
                    continue
                shape = model_shape(path)
                for role in args.roles.split(","):
                    for ws, threads in shapes:
                        for dtype, share in itertools.product(dtypes, shares):
                            r = measure(
                                path,
                                role,
                                dtype,
                                ws,
                                threads,
                                args.batch,
                                args.updates,
                                args.ppo_epochs,
                                share,
                            )
                            data = r.pop("_data")
                            runs = r["prefix_runs"] if share else None
                            flops = update_flops(shape, data, role, runs) * args.ppo_epochs
                            r.update(model=model, params=shape["params"], flops_per_update=flops,
                                     flops_per_s=flops / r["seconds_per_update"])  # fmt: skip
                            results.append(r)
                            print(f"  measured {model} {role} {dtype} {ws}x{r['threads_per_rank']} "
                                  f"prefix sharing {'on' if share else 'off'}: "
                                  f"{r['seconds_per_update']:.2f} s/update", flush=True)  # fmt: skip
    finally:
        ray.shutdown()
    # the machine may be shared: the peak is the best of the measurements before and after the updates
    peaks = {d: max(v, matmul_peak_flops(args.matmul_n, threads=cpus, dtype=d)) for d, v in peaks.items()}
    for r in results:
        r["share_of_peak"] = r["flops_per_s"] / peaks[r["dtype"]]
    print("matmul peak (" + f"{args.matmul_n}^2, {cpus} threads, best before/after): "
          + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in peaks.items()))  # fmt: skip
    print(f"\nFSDP2 updates through WorkerGroup (gloo), {args.batch} atlas episodes per update; share of the "
          "matmul peak of the dtype each runs in, measured in this run")  # fmt: skip
    print(f"{'model':9} {'role':6} {'dtype':8} {'ranks':>5} {'thr':>3} {'prefix':>6} {'tokens':>6} {'s/update':>8} "
          f"{'tokens/s':>8} {'GFLOP/s':>7} {'% peak':>6} {'MB/rank':>7}")  # fmt: skip
    for r in results:
        print(f"{r['model'][:9]:9} {r['role']:6} {r['dtype']:8} {r['world_size']:5d} {r['threads_per_rank']:3d} "
              f"{'shared' if r['share_prefix'] else 'full':>6} "
              f"{r['tokens_per_update']:6d} {r['seconds_per_update']:8.2f} {r['tokens_per_s']:8.0f} "
              f"{r['flops_per_s'] / 1e9:7.2f} {100 * r['share_of_peak']:6.1f} {r['peak_mb_per_rank']:7d}")  # fmt: skip
    speedups = [
        (a, b) for a in results for b in results if a["share_prefix"] and not b["share_prefix"]
        and all(a[k] == b[k] for k in ("model", "role", "dtype", "world_size", "threads_per_rank"))
    ]  # fmt: skip
    for a, b in speedups:
        print(f"prefix sharing, {a['model']} {a['role']} {a['dtype']} {a['world_size']}x{a['threads_per_rank']}: "
              f"{b['seconds_per_update'] / a['seconds_per_update']:.2f}x faster per update "
              f"({b['seconds_per_update']:.2f} -> {a['seconds_per_update']:.2f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peaks, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
