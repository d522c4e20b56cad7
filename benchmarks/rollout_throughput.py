"""Rollout throughput: generated tokens/s and episodes/s of the vLLM and transformers (hf) engines.

    python benchmarks/rollout_throughput.py                     # both engines x {embedded, random ~100M}
    python benchmarks/rollout_throughput.py --engines hf --models embedded --episodes 8

Each (engine, model) runs in its own subprocess (a clean interpreter and a clean vLLM), through the same
``workers.rollout.RolloutWorker`` a training run uses, with the tool server in the loop: a FastAPI server
started in its own process (``tools_env.server.serve(background="process")``, as ``rollout.tool_server=local``
does) and a ``ToolClient`` in the worker. One warm-up rollout, then ``--episodes`` atlas episodes timed in one
lockstep batch. The hf engine gets ``--threads`` torch threads (default 1, what the controller gives a
rollout worker; several OpenMP threads collapse when the cores are oversubscribed); vLLM's CPU engine
manages its own threads. Models: ``embedded`` (the ~1M-parameter default), ``random100m`` (a Qwen2 with random
weights and the embedded tokenizer, built in a temporary directory; ``--random-*`` set its shape), or a
model directory. Ratios are against the first configuration measured in the same run.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_random_qwen2(directory: Path, hidden: int, layers: int, intermediate: int, heads: int) -> int:
    """A Qwen2 with random weights and the embedded model's tokenizer and chat template; returns #params."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from steprl.models.tiny import ensure_tiny_model

    tok = AutoTokenizer.from_pretrained(ensure_tiny_model())
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One (engine, model) measurement, in this process."""
    from steprl.episode import EpisodeBudget
    from tools_env.suite import get_suite
    from workers.rollout import RolloutWorker

    budget = EpisodeBudget(spec["max_turns"], spec["max_response_tokens"], spec["max_tokens_per_turn"])
    kwargs: dict[str, Any] = {"dtype": "float32", "seed": 0}
    if spec["engine"] == "vllm":
        kwargs.update(
            max_model_len=spec["max_model_len"], gpu_memory_utilization=spec["gpu_memory_utilization"]
        )
    t0 = time.perf_counter()
    worker = RolloutWorker(spec["path"], spec["engine"], kwargs, "hermes", spec["tool_server"], ["atlas"], budget,
                           threads=spec["threads"])  # fmt: skip
    startup = time.perf_counter() - t0
    tasks = [t.to_dict() for t in get_suite("atlas").tasks("train", spec["episodes"] + 2, seed=0)]
    try:
        worker.rollout(tasks[-2:], 1.0, 0)  # warm-up (kernels, prefix cache of the system prompt)
        t1 = time.perf_counter()
        trajs, stats = worker.rollout(tasks[: spec["episodes"]], 1.0, 1)
        seconds = time.perf_counter() - t1
        memory = worker.peak_memory_mb()
    finally:
        worker.shutdown()
    generated = stats["rollout/generated_tokens"]
    n = len(trajs)
    return {
        "engine": spec["engine"],
        "model": spec["model"],
        "params": spec["params"],
        "episodes": n,
        "generated_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
        "episodes_per_s": n / seconds,
        "turns_per_episode": sum(t.num_steps for t in trajs) / n,
        "tool_calls_per_episode": sum(len(s.tool_calls) for t in trajs for s in t.steps) / n,
        "engine_startup_s": round(startup, 1),
        "peak_mb": round(memory["peak_mb"]),
    }


def _child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "VLLM_CONFIGURE_LOGGING": "0"}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"{spec['engine']}/{spec['model']} failed (exit {proc.returncode}): {' | '.join(tail)}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def count_params(path: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def default_engine_note(results: list[dict[str, Any]]) -> str:
    """Which engine the training defaults pick, and what this run measured about that choice."""
    from steprl.config import RolloutConfig

    default = RolloutConfig().engine
    lines = [
        f"default engine (RolloutConfig.engine, recipes' rollout: {default}): {default}. It is the engine the "
        "same code uses on GPUs (paged KV cache, continuous batching, CUDA graphs), where generation dominates an "
        "iteration; rollout=hf is the fallback for machines without vLLM and for quick tests."
    ]
    by = {(r["engine"], r["model"]): r for r in results}
    for model in dict.fromkeys(r["model"] for r in results):
        if ("vllm", model) in by and ("hf", model) in by:
            ratio = by[("vllm", model)]["tokens_per_s"] / by[("hf", model)]["tokens_per_s"]
            lines.append(
                f"measured here on {model}: vllm/hf = {ratio:.2f}x tokens/s "
                f"(vllm start-up {by[('vllm', model)]['engine_startup_s']:.0f}s, hf {by[('hf', model)]['engine_startup_s']:.0f}s)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="hf,vllm")
    p.add_argument(
        "--models", default="embedded,random100m", help="embedded, random100m or model directories"
    )
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--max-turns", type=int, default=6)
    p.add_argument("--max-response-tokens", type=int, default=320)
    p.add_argument("--max-tokens-per-turn", type=int, default=48)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the hf engine (1: as the controller starts rollout workers)",
    )
    p.add_argument("--random-hidden", type=int, default=768)
    p.add_argument("--random-layers", type=int, default=10)
    p.add_argument("--random-intermediate", type=int, default=3072)
    p.add_argument("--random-heads", type=int, default=12)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0

    from steprl.models.tiny import ensure_tiny_model
    from tools_env.server import serve

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steprl-bench-") as tmp:
        paths: dict[str, tuple[str, int]] = {}
        for model in args.models.split(","):
            if model == "embedded":
                path = str(ensure_tiny_model())
                paths[model] = (path, count_params(path))
            elif model == "random100m":
                path = str(Path(tmp) / "random")
                shape = (args.random_hidden, args.random_layers, args.random_intermediate, args.random_heads)
                paths[model] = (path, build_random_qwen2(Path(path), *shape))
            else:
                paths[model] = (model, count_params(model))
        with serve(host="127.0.0.1", port=0, background="process") as server:
            for model, (path, params) in paths.items():
                for engine in args.engines.split(","):
                    spec = {
                        "engine": engine, "model": model, "path": path, "params": params, "tool_server": server.client_url,
                        "episodes": args.episodes, "max_turns": args.max_turns, "threads": args.threads,
                        "max_response_tokens": args.max_response_tokens, "max_tokens_per_turn": args.max_tokens_per_turn,
                        "max_model_len": args.max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization,
                    }  # fmt: skip
                    r = _child(spec, args.timeout)
                    results.append(r)
                    print(f"  measured {engine}/{model}: {r['tokens_per_s']:.0f} tokens/s", flush=True)
    base = results[0]
    print(f"\nrollout throughput, {args.episodes} atlas episodes per batch, tool server in its own process "
          f"(ratios vs {base['engine']}/{base['model']} measured in this run)")  # fmt: skip
    header = f"{'engine':6} {'model':12} {'params':>8} {'tokens/s':>9} {'episodes/s':>10} {'x tok/s':>8} {'turns/ep':>8} {'calls/ep':>8} {'start s':>7} {'peak MB':>8}"
    print(header)
    for r in results:
        r["ratio_tokens_per_s"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["ratio_episodes_per_s"] = r["episodes_per_s"] / base["episodes_per_s"]
        print(f"{r['engine']:6} {r['model'][:12]:12} {r['params'] / 1e6:7.1f}M {r['tokens_per_s']:9.0f} "
              f"{r['episodes_per_s']:10.2f} {r['ratio_tokens_per_s']:8.2f} {r['turns_per_episode']:8.2f} "
              f"{r['tool_calls_per_episode']:8.2f} {r['engine_startup_s']:7.1f} {r['peak_mb']:8d}")  # fmt: skip
    note = default_engine_note(results)
    print("\n" + note)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "default_engine": note}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
