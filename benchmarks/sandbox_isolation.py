"""What the sandbox's per-run isolation costs: latency of one ``run_python`` call per configuration.

    python benchmarks/sandbox_isolation.py                 # 20 rounds, interleaved, as root
    python benchmarks/sandbox_isolation.py --rounds 5 --concurrency 8

The baseline is the namespaced sandbox without a per-run identity (``uid=None``: no leased uid, no user
namespace, no uid drop); the default adds the leased uid, the user namespace and the fresh session keyring.
The best-effort rows add the end-of-call cleanup (descendants, keyrings, SysV IPC, shared directories).
Configurations alternate within every round so that a change in machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools_env.sandbox import SandboxIsolationWarning, SandboxLimits, run_python  # noqa: E402

CONFIGS = {
    "namespaces, no per-run uid (baseline)": SandboxLimits(uid=None),
    "default (user namespace + leased uid)": SandboxLimits(),
    "best effort, no per-run uid": SandboxLimits(uid=None, namespaces=False),
    "best effort (leased uid + cleanup)": SandboxLimits(namespaces=False),
}


def one_round(limits: SandboxLimits, concurrency: int) -> float:
    """Seconds per call when ``concurrency`` calls run at once (the tool server's thread pool)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: run_python("print(6 * 7)", limits), range(concurrency)))
    elapsed = time.perf_counter() - start
    bad = [r for r in results if r.stdout != "42\n"]
    if bad:
        raise SystemExit(f"a run failed: {bad[0]}")
    return elapsed / concurrency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore", SandboxIsolationWarning)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, limits in CONFIGS.items():
            times[name].append(one_round(limits, args.concurrency))
    base = statistics.median(times[next(iter(CONFIGS))])
    rows = {name: statistics.median(t) for name, t in times.items()}
    for name, median in rows.items():
        print(f"{name:42s} {median * 1000:7.1f} ms/call  x{median / base:.2f}")
    print(json.dumps({"rounds": args.rounds, "concurrency": args.concurrency, "ms_per_call": rows}))


if __name__ == "__main__":
    main()
