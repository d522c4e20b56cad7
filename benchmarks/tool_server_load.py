"""Load test of the tool server on loopback: many concurrent sessions, each making many tool calls.

    python benchmarks/tool_server_load.py                      # 64 sessions x 50 calls, server in a subprocess
    python benchmarks/tool_server_load.py --sessions 8 --calls 10 --max-seconds 30
    python benchmarks/tool_server_load.py --baseline-src /tmp/old --rounds 2   # vs another checkout's server

Each session opens an atlas task, makes ``--calls`` sequential calls (one HTTP request each, alternating
``lookup`` and ``calculator``), and closes. Prints p50/p99 latency of a call and calls per second, and
exits non-zero if any request failed or the run exceeded ``--max-seconds``. With ``--baseline-src`` the
same load (same client) also runs against the server of another source tree (e.g. ``git archive`` of an
older commit), alternating rounds, and prints the ratios: a before/after of the server in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools_env import ToolCall, get_suite  # noqa: E402
from tools_env.client import AsyncToolClient  # noqa: E402
from tools_env.server import _wait_healthy, serve  # noqa: E402


async def _session(
    client: AsyncToolClient, task, calls: int, latencies: list[float], errors: list[str]
) -> None:
    country, field = task.meta["countries"][0], task.meta["field"]
    session = await client.open_session(task)
    for i in range(calls):
        call = (
            ToolCall("lookup", {"country": country, "field": field})
            if i % 2 == 0
            else ToolCall("calculator", {"expression": f"{i} * 7 + 1"})
        )
        start = time.perf_counter()
        try:
            (outcome,) = await client.call(session, [call])
            if not outcome.ok:
                errors.append(f"tool error: {outcome.output}")
        except Exception as e:  # counted, not raised: the report says how many
            errors.append(f"{type(e).__name__}: {e}")
        latencies.append(time.perf_counter() - start)
    await client.close_session(session)


async def _run(
    url: str, token: str | None, sessions: int, calls: int
) -> tuple[list[float], list[str], float]:
    tasks = get_suite("atlas").tasks("train", sessions, seed=0)
    latencies: list[float] = []
    errors: list[str] = []
    async with AsyncToolClient(url, token=token, timeout=60) as client:
        await client.health()
        start = time.perf_counter()
        await asyncio.gather(*(_session(client, t, calls, latencies, errors) for t in tasks))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def run_load(url: str, token: str | None = None, sessions: int = 64, calls: int = 50,
             max_seconds: float = 120.0) -> dict[str, float]:  # fmt: skip
    """Run the load against a server at ``url``; raises if it takes longer than ``max_seconds``."""
    latencies, errors, elapsed = asyncio.run(asyncio.wait_for(_run(url, token, sessions, calls), max_seconds))
    ordered = sorted(latencies)
    return {
        "sessions": sessions,
        "calls": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def _baseline_server(src: str, token: str) -> tuple[subprocess.Popen, str]:
    """``python -m tools_env.server`` of the source tree ``src`` (its own code first on the path)."""
    env = {**os.environ, "PYTHONPATH": src, "STEPRL_TOOL_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools_env.server"], cwd=src, env=env, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the baseline server of {src} did not start (exit code {proc.wait()})")
    return proc, line.split("listening on ", 1)[1].strip()


def _measure(args: argparse.Namespace, token: str, baseline_src: str | None) -> dict:
    if baseline_src is None:
        with serve(token=token, background=args.background) as server:
            return run_load(server.url, token, args.sessions, args.calls, args.max_seconds)
    proc, url = _baseline_server(baseline_src, token)
    try:
        _wait_healthy(url, 30)
        return run_load(url, token, args.sessions, args.calls, args.max_seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _safe_measure(args: argparse.Namespace, token: str, baseline_src: str | None) -> dict:
    try:
        return _measure(args, token, baseline_src)
    except Exception as e:  # reported as a failed round, the other rounds still run
        return {"errors": -1, "first_error": f"{type(e).__name__}: {e}"[:200]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--token", default=None)
    parser.add_argument("--background", choices=["process", "thread"], default="process")
    parser.add_argument("--baseline-src", default=None, help="also load the server of this source tree")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds with --baseline-src")
    args = parser.parse_args()
    if args.url:
        report = run_load(args.url, args.token, args.sessions, args.calls, args.max_seconds)
    elif args.baseline_src:
        token = secrets.token_hex(16)
        rounds = []
        for _ in range(args.rounds):
            rounds.append({"baseline": _safe_measure(args, token, args.baseline_src),
                           "current": _safe_measure(args, token, None)})  # fmt: skip
        for r in rounds:
            b, c = r["baseline"], r["current"]
            if b.get("errors") == 0 and c.get("errors") == 0:
                r["current/baseline"] = {
                    k: round(c[k] / b[k], 3) for k in ("calls_per_s", "p50_ms", "p99_ms")
                }
        print(json.dumps(rounds, indent=2))
        return 0 if all(r["current"].get("errors") == 0 for r in rounds) else 1
    else:
        token = secrets.token_hex(16)
        report = _measure(args, token, None)
    print(json.dumps(report, indent=2))
    if report["errors"]:
        print(f"FAILED: {report['errors']} errors, first: {report['first_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
