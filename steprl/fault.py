"""Keeping an iteration whole when rollout or reward workers, or the local tool server, fail.

Rollout and reward workers hold no state between calls except their weights, so a failure is
handled by re-creating the worker (on the controller's side, with the current weights) and running
again the work it had not returned. Work is cut into chunks whose item ids (an episode is
``(task index, sample index)``) and seeds are fixed before anything is submitted: a chunk run again
on a fresh worker produces the same episodes with a per-call seeded engine, and results are merged
by id, so an iteration ends with the full batch, nothing lost and nothing counted twice.

Failures and what is done about them:

* the worker process died (``RayActorError``: killed, OOM, its node lost) -> the slot's worker is
  re-created and the chunk re-submitted;
* the call raised while the local tool server was down -> the server is restarted on the same port
  (the workers' clients reconnect) and the chunk re-submitted, without charging the worker;
* the call raised otherwise -> treated like a dead worker (its engine may be in a bad state).

Each worker slot and the tool server may be restarted ``trainer.max_worker_restarts`` times over
the run; one more failure stops the run with :class:`WorkerFailure` naming the worker and the error.
A hung worker (alive but never answering) is not detected here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import ray

# the actor's process is gone (or its node): its in-flight calls will never answer
ACTOR_GONE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OwnerDiedError,
)


class WorkerFailure(RuntimeError):
    """A worker (or the tool server) failed more often than ``trainer.max_worker_restarts`` allows."""


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:300]


class LocalToolServer:
    """The FastAPI tool server in its own process on loopback, restarted on the same port if it dies.

    Same ``url`` / ``stop()`` as ``tools_env.server.RunningServer``; ``epoch`` counts restarts so
    that a pool can tell that a call failed because the server went away under it.
    """

    def __init__(self, max_restarts: int, host: str = "127.0.0.1") -> None:
        from tools_env.server import serve

        self._serve = serve
        self.host, self.max_restarts = host, max_restarts
        self.server = serve(host=host, port=0, background="process")  # with a random token
        self.token, self.url, self.client_url = self.server.token, self.server.url, self.server.client_url
        self.port = int(self.url.rsplit(":", 1)[1])
        self.epoch = 0
        self.events: list[dict[str, Any]] = []

    def alive(self, timeout: float = 5.0) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def pid(self) -> int | None:
        """The process listening on the server's port (for logs and fault-injection tests)."""
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == self.port and conn.status == psutil.CONN_LISTEN:
                return conn.pid
        return None

    def recover(self) -> bool:
        """Restart the server if it does not answer; True if it was restarted."""
        if self.alive():
            return False
        if self.epoch >= self.max_restarts:
            raise WorkerFailure(
                f"the local tool server at {self.url} died {self.epoch + 1} times "
                f"(trainer.max_worker_restarts={self.max_restarts})"
            )
        with contextlib.suppress(Exception):
            self.server.stop()
        try:
            self.server = self._serve(host=self.host, port=self.port, background="process", token=self.token)
        except Exception as e:  # e.g. the port was taken meanwhile: the workers cannot follow a new one
            raise WorkerFailure(
                f"cannot restart the local tool server on port {self.port}: {_short(e)}"
            ) from e
        self.epoch += 1
        self.events.append({"what": "tool_server_restart", "url": self.url, "time": time.time()})
        return True

    def stop(self) -> None:
        self.server.stop()


class WorkerPool:
    """``size`` Ray actors of one kind, re-created by the controller when they fail.

    ``create(slot)`` returns a new actor handle; ``prepare(handle)`` (optional) blocks until it is
    ready to work (engine started, current weights loaded). ``workers`` is the live list of handles:
    a replaced worker is swapped in place, so code holding the list sees the new one.
    """

    def __init__(
        self,
        kind: str,
        create: Callable[[int], Any],
        size: int,
        max_restarts: int,
        prepare: Callable[[Any], Any] | None = None,
        tool_server: LocalToolServer | None = None,
    ) -> None:
        self.kind, self.create, self.prepare = kind, create, prepare
        self.max_restarts, self.tool_server = max_restarts, tool_server
        self.workers: list[Any] = [create(i) for i in range(size)]
        self.restarts = [0] * size
        self._generation = [0] * size  # bumped on every re-creation of the slot
        self.events: list[dict[str, Any]] = []
        # called as on_submit(chunk index, slot) after each submission: progress, fault injection
        self.on_submit: Callable[[int, int], None] | None = None

    def __len__(self) -> int:
        return len(self.workers)

    def restart(self, slot: int, error: BaseException) -> None:
        """Replace the slot's worker; a replacement that fails to start counts as one more failure."""
        while True:
            if self.restarts[slot] >= self.max_restarts:
                raise WorkerFailure(
                    f"{self.kind} worker {slot} failed {self.restarts[slot] + 1} times "
                    f"(trainer.max_worker_restarts={self.max_restarts}); last error: {_short(error)}"
                ) from error
            with contextlib.suppress(Exception):  # it may be dead already
                ray.kill(self.workers[slot], no_restart=True)
            self.events.append({"what": f"{self.kind}_restart", "slot": slot, "error": _short(error)})
            self.workers[slot] = self.create(slot)
            self.restarts[slot] += 1
            self._generation[slot] += 1
            try:
                if self.prepare is not None:
                    self.prepare(self.workers[slot])
                return
            except Exception as e:  # e.g. the engine did not start on the new process
                error = e

    def reconfigure(self, create: Callable[[int], Any]) -> None:
        """Replace every worker with one from ``create`` (a new configuration, not a failure: no
        restart is charged); later restarts use ``create`` too. The new workers are ready first."""
        new = [create(i) for i in range(len(self.workers))]
        if self.prepare is not None:
            for w in new:
                self.prepare(w)
        for w in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(w, no_restart=True)
        self.workers[:] = new  # in place: holders of the list see the new workers
        self.create = create
        self._generation = [g + 1 for g in self._generation]

    def run(self, chunks: Sequence[Any], submit: Callable[[Any, int, Any], Any]) -> list[Any]:
        """Each chunk's result exactly once, in chunk order.

        ``submit(worker, i, chunks[i])`` returns an ObjectRef; chunk ``i`` goes to slot ``i % size``
        (also after a restart, so a chunk's seed never depends on which process ran it).
        """
        results: list[Any] = [None] * len(chunks)
        inflight: dict[Any, tuple[int, int, int, int]] = {}  # ref -> chunk, slot, generation, server epoch

        def send(i: int) -> None:
            slot = i % len(self.workers)
            ref = submit(self.workers[slot], i, chunks[i])
            epoch = self.tool_server.epoch if self.tool_server else 0
            inflight[ref] = (i, slot, self._generation[slot], epoch)
            if self.on_submit is not None:
                self.on_submit(i, slot)

        for i in range(len(chunks)):
            send(i)
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            i, slot, generation, epoch = inflight.pop(ref)
            try:
                results[i] = ray.get(ref)
                continue
            except ACTOR_GONE as e:
                if self._generation[slot] == generation:  # else: replaced already, for another chunk
                    self.restart(slot, e)
            except ray.exceptions.RayTaskError as e:
                server = self.tool_server
                if server is not None and (server.recover() or server.epoch != epoch):
                    self.events.append({"what": "retry_after_tool_server_restart", "chunk": i})
                elif self._generation[slot] == generation:
                    self.restart(slot, e)
            send(i)
        return results


def merge_by_id(chunks: Sequence[Sequence[Hashable]], parts: Sequence[Sequence[Any]]) -> dict[Hashable, Any]:
    """``{id: result}`` from per-chunk results; every id exactly once, or an error."""
    out: dict[Hashable, Any] = {}
    for ids, part in zip(chunks, parts, strict=True):
        if len(part) != len(ids):
            raise RuntimeError(f"a worker returned {len(part)} results for {len(ids)} items")
        for key, result in zip(ids, part, strict=True):
            if key in out:
                raise RuntimeError(f"item {key} was returned twice")
            out[key] = result
    return out


def split(ids: Sequence[Hashable], n: int) -> list[list[Hashable]]:
    """``n`` round-robin chunks of ``ids`` (item j in chunk j % n), empty chunks dropped."""
    return [c for c in (list(ids[i::n]) for i in range(n)) if c]
