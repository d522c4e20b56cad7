"""Weight sync without a shared file system: two Ray nodes on this machine, the rollout node in its own
mount namespace with a private ``/dev/shm``, so the directory the file path writes is not there for the
rollout worker. ``rollout.weight_sync=auto`` must pick the object store, the sync must succeed, and vLLM's
log-probs must then match the updated actor's (tolerance as in test_weight_sync.py: same fp32 weights,
different kernels and summation order; a stale sync is off by far more, checked before the sync).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TOLERANCE = 2e-3
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray") or "ray"
REPO = Path(__file__).resolve().parents[1]


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=f"{REPO}:{env.get('PYTHONPATH', '')}")  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    end = time.time() + 120
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None, f"ray start exited:\n{log.read_text()[-3000:]}"
        assert time.time() < end, f"ray start did not finish:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _OnNode:
    """A placement that pins every rank of a group to a node by a custom resource."""

    def __init__(self, resource: str) -> None:
        self.resource = resource

    def options(self, _name: str, _rank: int) -> dict:
        return {"resources": {self.resource: 0.01}}


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare(1) with mount namespaces (root)")
def test_object_store_sync_reaches_a_node_without_the_shared_directory(tiny_model_path, tmp_path):
    import ray
    import torch
    from test_multinode import _free_ports, _node_ports  # the sibling test's port helpers

    from steprl.config import StepRLConfig
    from steprl.episode import EpisodeBudget
    from steprl.protocol import collate
    from tools_env import get_suite
    from workers.fsdp import ActorWorker
    from workers.group import WorkerGroup
    from workers.rollout import RolloutWorker
    from workers.weight_sync import choose_mode, sync_weights

    (port,) = _free_ports(1)
    head = _start([RAY, "start", "--head", "--block", "--disable-usage-stats", f"--port={port}",
                   "--include-dashboard=false", "--num-cpus=3", '--resources={"trainer_node": 1}',
                   *_node_ports()], tmp_path / "head.log")  # fmt: skip
    inner = " ".join([RAY, "start", "--block", "--disable-usage-stats", f"--address=127.0.0.1:{port}",
                      "--num-cpus=2", "--resources='{\"rollout_node\": 1}'", *_node_ports()])  # fmt: skip
    node = None
    try:
        node = _start(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"mount -t tmpfs -o size=4g tmpfs /dev/shm && exec {inner}"], tmp_path / "node.log")  # fmt: skip
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        cfg = StepRLConfig()
        cfg.optim.actor_lr = 5e-3  # a visible change in one update
        cfg.actor.world_size = 1
        actor = WorkerGroup(
            ActorWorker, 1, 0.5, 0.0, "actor", placement=_OnNode("trainer_node"), model_path=tiny_model_path,
            model_cfg=cfg.model, worker_cfg=cfg.actor, optim_cfg=cfg.optim, algo_cfg=cfg.algorithm, seed=0,
        )  # fmt: skip
        rollout = ray.remote(num_cpus=1, resources={"rollout_node": 1})(RolloutWorker).remote(
            tiny_model_path,
            "vllm",
            {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.05},
            "hermes",
            "inprocess",
            ["atlas"],
            EpisodeBudget(max_turns=2, max_response_tokens=96, max_tokens_per_turn=24),
        )
        ray.get(rollout.ready.remote())
        sync_dir = Path("/dev/shm") / f"steprl-sync-test-{os.getpid()}"
        sync_dir.mkdir()
        try:
            (sync_dir / "probe").write_text("x")
            sees = ray.get(rollout.run.remote(lambda _w, p: os.path.exists(p), str(sync_dir / "probe")))
            assert not sees, "the rollout node sees the driver's /dev/shm: the test would not test anything"
            assert choose_mode("auto", actor, [rollout]) == "object_store"
            assert choose_mode("file", actor, [rollout]) == "file"
            tasks = [t.to_dict() for t in get_suite("atlas").tasks("train", 6, 0)]

            def sample(seed: int):
                trajs, _ = ray.get(rollout.rollout.remote(tasks, 1.0, seed))
                batch = collate(trajs, 0)
                return batch, {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "action_mask")}

            def compare() -> float:
                batch, data = sample(123)
                diff = (actor.gather_rows("compute_logprobs", data) - batch.rollout_logprobs).abs()[
                    batch.action_mask
                ]
                assert diff.numel() > 20
                return float(diff.max())

            assert compare() < TOLERANCE
            batch, data = sample(7)
            data["old_logprobs"] = actor.gather_rows("compute_logprobs", data)
            data["advantages"] = torch.randn(batch.input_ids.shape) * batch.action_mask
            actor.mean_metrics("update_policy", data)
            stale = compare()
            assert stale > 10 * TOLERANCE, f"the update did not move the policy enough ({stale})"
            with pytest.raises(ray.exceptions.RayTaskError):  # the file path cannot work here
                sync_weights("file", actor, [rollout], sync_dir)
            seconds = sync_weights("object_store", actor, [rollout], sync_dir)
            assert compare() < TOLERANCE
            print(json.dumps(seconds))
        finally:
            shutil.rmtree(sync_dir, ignore_errors=True)
            actor.shutdown()
            ray.kill(rollout)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if node is not None:
            _stop(node)
        _stop(head)
