"""Weight-sync time against model size for each path (``rollout.weight_sync=file`` and ``object_store``).

    python benchmarks/weight_sync.py                          # embedded model and SmolLM2 (if cached)
    python benchmarks/weight_sync.py --models embedded --repeats 5

One Ray node, one actor rank (FSDP2, float32) and one vLLM rollout worker, as in a default run. For each
model and path, ``--repeats`` syncs of the actor's current weights (``workers/weight_sync.sync_weights``),
timed in two halves: export (gather the full state dict; ``file`` also writes safetensors to
``/dev/shm``) and load (the engine receives and reloads it). After the syncs, vLLM's log-probs of
sampled tokens are compared with the actor's, so a path that is fast because it loads nothing shows
up. On one node both paths move the bytes through shared memory; across nodes ``object_store`` adds a
network transfer of the state dict (its size is printed) that this single-node measurement does not
include. The ratio is object_store over file, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.peer_trl import resolve_model  # noqa: E402

MODES = ("file", "object_store")


def measure(model_path: str, repeats: int, sync_dir: Path) -> list[dict[str, Any]]:
    """Sync times of each path for one model, and the log-prob agreement after its last sync."""
    import ray

    from steprl.config import StepRLConfig
    from steprl.episode import EpisodeBudget
    from steprl.protocol import collate
    from tools_env import get_suite
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup
    from workers.rollout import RolloutWorker
    from workers.weight_sync import sync_weights

    cfg = StepRLConfig()
    actor = WorkerGroup(
        ActorWorker, 1, 1.0, 0.0, "actor", model_path=model_path, model_cfg=cfg.model,
        worker_cfg=cfg.actor, optim_cfg=cfg.optim, algo_cfg=cfg.algorithm, seed=0,
    )  # fmt: skip
    engine = {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.1}
    budget = EpisodeBudget(max_turns=2, max_response_tokens=64, max_tokens_per_turn=24)
    rollout = ray.remote(num_cpus=1)(RolloutWorker).remote(
        model_path, "vllm", engine, "hermes", "inprocess", ["atlas"], budget
    )
    ray.get(rollout.ready.remote())
    tasks = [t.to_dict() for t in get_suite("atlas").tasks("train", 4, 0)]
    state_mb = (
        sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors")) / 2**20
    )  # ~ the state dict
    rows = []
    try:
        for mode in MODES:
            times = [sync_weights(mode, actor, [rollout], sync_dir) for _ in range(repeats)]
            trajs, _ = ray.get(rollout.rollout.remote(tasks, 1.0, 0))
            batch = collate(trajs, 0)
            data = {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "action_mask")}
            actor_lp = actor.gather_rows("compute_logprobs", data)
            diff = float((actor_lp - batch.rollout_logprobs).abs()[batch.action_mask].mean())
            rows.append({
                "mode": mode, "state_mb": state_mb,
                "export_s": statistics.median(t["export"] for t in times),
                "load_s": statistics.median(t["load"] for t in times),
                "total_s": statistics.median(t["export"] + t["load"] for t in times),
                "logprob_diff": diff, "repeats": repeats,
            })  # fmt: skip
    finally:
        actor.shutdown()
        ray.kill(rollout)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="embedded,smollm2", help="embedded, smollm2 or model directories")
    p.add_argument("--repeats", type=int, default=3, help="timed syncs per path (median reported)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import tempfile

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in args.models.split(","):
        path = resolve_model(name)
        if path is None:
            print(f"{name}: not available here (skipped)", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="steprl-sync-bench-", dir="/dev/shm") as d:
            results[name] = measure(path, args.repeats, Path(d))
        print(f"{name}: done", flush=True)
    ray.shutdown()
    print("\n| model | state dict MB | path | export s | load s | total s | vs file | log-prob diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        base = rows[0]["total_s"]
        for r in rows:
            print(
                f"| {name} | {r['state_mb']:.0f} | {r['mode']} | {r['export_s']:.2f} | {r['load_s']:.2f} | "
                f"{r['total_s']:.2f} | {r['total_s'] / base:.2f}x | {r['logprob_diff']:.1e} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
