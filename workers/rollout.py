"""RolloutWorker: an engine (vLLM or transformers) plus the tool environment, running episodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from steprl.chat import ChatEncoder
from steprl.engines import get_engine
from steprl.engines.base import stop_token_ids
from steprl.episode import EpisodeBudget, run_episodes
from steprl.modeling import auto_threads
from steprl.protocol import Trajectory
from tools_env.parsers import get_parser
from tools_env.suite import Task, get_suite


def make_env(tool_server: str) -> Any:
    """``inprocess`` -> ToolEnv; a URL -> ToolClient speaking to that FastAPI server."""
    if tool_server == "inprocess":
        from tools_env.env import ToolEnv

        return ToolEnv()
    from tools_env.client import ToolClient

    return ToolClient(tool_server)


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        engine: str,
        engine_kwargs: dict[str, Any],
        tool_format: str,
        tool_server: str,
        suites: list[str],
        budget: EpisodeBudget,
        threads: int = 0,
        tool_prompt: str = "auto",
        workers_per_node: int = 1,
    ) -> None:
        import os

        import torch
        from transformers import AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        torch.set_num_threads(auto_threads(threads, workers_per_node))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.env = make_env(tool_server)
        self.encoders = {}
        for suite in suites:
            tools = self.env.list_tools(suite)
            self.encoders[suite] = ChatEncoder(
                self.tokenizer, tools, get_suite(suite).system_prompt, tool_prompt=tool_prompt
            )
        first = next(iter(self.encoders.values()))
        kwargs = dict(engine_kwargs)
        if engine == "hf":
            kwargs["pad_token_id"] = first.pad_id
        t0 = time.time()
        stops = stop_token_ids(model_path, first.stop_token_ids)
        self.engine = get_engine(engine)(model_path, stop_token_ids=stops, **kwargs)
        self.startup_seconds = time.time() - t0
        self.parse = get_parser(tool_format)
        self.budget = budget

    def ready(self) -> float:
        return self.startup_seconds

    def pid(self) -> int:
        """This worker's process id (logs; fault-injection tests kill it)."""
        import os

        return os.getpid()

    def rollout(
        self,
        tasks: list[dict[str, Any]],
        temperature: float,
        seed: int | None,
        group_ids: list[str] | None = None,
    ) -> tuple[list[Trajectory], dict[str, float]]:
        t0 = time.time()
        trajs = run_episodes(
            self.engine,
            self.env,
            self.encoders,
            self.parse,
            [Task.from_dict(t) for t in tasks],
            self.budget,
            temperature,
            seed,
            group_ids,
        )
        seconds = time.time() - t0
        generated = sum(sum(t.action_mask) for t in trajs)
        return trajs, {"rollout/seconds": seconds, "rollout/generated_tokens": generated}

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(self, *args, **kwargs)`` here, next to the engine and the environment.

        The extension point for methods whose rollouts are not plain episodes (ARPO's branching
        tree, ArCHer's policy actions for replayed states, CodeTool's candidate search): they ship a
        module-level function instead of adding a method to this worker.
        """
        return fn(self, *args, **kwargs)

    def load_weights(self, weights_dir: str) -> float:
        """Reload from the directory actor rank 0 wrote (``rollout.weight_sync=file``)."""
        import glob

        t0 = time.time()
        if not glob.glob(f"{glob.escape(weights_dir)}/*.safetensors"):
            raise FileNotFoundError(
                f"weight sync: no *.safetensors in {weights_dir} on this node (no file system shared with "
                "actor rank 0?); set rollout.weight_sync=object_store (or auto)"
            )
        self.engine.load_weights(weights_dir)
        return time.time() - t0

    def load_state(self, state: dict[str, Any]) -> float:
        """Weights that arrived through Ray's object store (``rollout.weight_sync=object_store``): written
        to this node's own ``/dev/shm`` and reloaded from there like the file path (no shared file system)."""
        import os
        import tempfile

        from workers.model_io import write_safetensors

        t0 = time.time()
        if getattr(self, "_recv_dir", None) is None:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._recv_dir = tempfile.mkdtemp(prefix="steprl-recv-", dir=shm)
        write_safetensors(state, self._recv_dir)
        del state
        self.engine.load_weights(self._recv_dir)
        return time.time() - t0

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of this worker (ru_maxrss) plus the peaks of its live child processes (vLLM
        runs its engine core in one; read from /proc), and the CUDA peak when the engine holds torch on a GPU."""
        import contextlib
        import os
        import resource
        from pathlib import Path

        import torch

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        me = os.getpid()
        todo = [me]
        while todo:  # descendants, via /proc/<pid>/task/<tid>/children (Linux); one may exit meanwhile
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in children.read_text().split()]
            if pid != me:
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                    kib += sum(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM:"))
        out = {"peak_mb": kib / 1024}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    def shutdown(self) -> None:
        import shutil

        self.engine.shutdown()
        if getattr(self, "_recv_dir", None):
            shutil.rmtree(self._recv_dir, ignore_errors=True)
