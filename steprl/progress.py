"""Progress on long work: a live bar for SFT, one line per RL iteration, and where the time went.

An iteration's wall clock is split into stages (``time/<stage>``): rollout (generation with the tools in
the loop), reward (scoring), the advantage stage (actor / reference / critic forward passes and the
estimator), the update stage (critic and actor), and the weight sync. ``time/overhead`` is what is left:
the controller's own work (collating, normalising, moving batches, polling memory).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

# the stages that partition an iteration (the sub-stages below are parts of "advantage" / "update")
STAGES = ("rollout", "reward", "advantage", "update", "sync")
SUB_STAGES = ("actor_forward", "ref_forward", "critic_forward", "critic_update", "actor_update")


class StageTimer:
    """Wall-clock seconds per named stage, summed when a stage runs several times, until ``reset``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def reset(self) -> dict[str, float]:
        """The ``time/<stage>`` seconds since the last reset (and start over)."""
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out


def with_overhead(times: Mapping[str, float]) -> dict[str, float]:
    """``times`` plus ``time/overhead`` = iteration minus the stages (missing stages count 0) and its share."""
    out = dict(times)
    staged = sum(out.get(f"time/{s}", 0.0) for s in STAGES)
    out["time/overhead"] = out["time/iteration"] - staged
    out["time/overhead_share"] = (
        out["time/overhead"] / out["time/iteration"] if out["time/iteration"] > 0 else 0.0
    )
    return out


def timing_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean seconds per stage over the logged iterations and the controller's share of all iteration time."""
    rows = [r for r in history if "time/iteration" in r and "time/overhead" in r]
    if not rows:
        return {}
    mean = {}
    for stage in (*STAGES, *SUB_STAGES, "overhead", "iteration"):
        vals = [float(r[f"time/{stage}"]) for r in rows if f"time/{stage}" in r]
        if vals:
            mean[stage] = sum(vals) / len(vals)
    total = sum(float(r["time/iteration"]) for r in rows)
    overhead = sum(float(r["time/overhead"]) for r in rows)
    return {
        "time_per_iteration_mean_seconds": mean,
        "controller_overhead_share": overhead / total if total > 0 else 0.0,
    }


def memory_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The largest ``memory/<worker>_peak_mb`` seen over the run, per key."""
    peaks: dict[str, float] = {}
    for r in history:
        for k, v in r.items():
            if k.startswith("memory/"):
                name = k.removeprefix("memory/")
                peaks[name] = max(peaks.get(name, 0.0), float(v))
    return {"peak_memory_mb": dict(sorted(peaks.items()))} if peaks else {}


def timing_line(m: Mapping[str, float]) -> str:
    """``12.3s = rollout 3.1 + reward 0.1 + forward 6.0 (actor 2.0 ref 2.0 critic 2.0) + ...``."""

    def parts(names: Sequence[str]) -> str:
        got = [f"{n.split('_')[0]} {m[f'time/{n}']:.1f}" for n in names if f"time/{n}" in m]
        return f" ({' '.join(got)})" if got else ""

    return (
        f"{m.get('time/iteration', 0):.1f}s = rollout {m.get('time/rollout', 0):.1f}"
        f" + reward {m.get('time/reward', 0):.1f}"
        f" + forward {m.get('time/advantage', 0):.1f}{parts(SUB_STAGES[:3])}"
        f" + update {m.get('time/update', 0):.1f}{parts(SUB_STAGES[3:])}"
        f" + sync {m.get('time/sync', 0):.1f} + controller {m.get('time/overhead', 0):.2f}"
        f" ({100 * m.get('time/overhead_share', 0):.1f}%)"
    )


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.t0 = time.time()

    def stage(self, text: str) -> None:
        if self.enabled:
            print(f"[steprl {time.time() - self.t0:6.1f}s] {text}", flush=True)

    def bar(self, done: int, total: int, text: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total or not sys.stdout.isatty() else "\r"
        if sys.stdout.isatty() or done == total or done % max(1, total // 10) == 0:
            print(f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text}", end=end, flush=True)

    def iteration(self, it: int, total: int, m: dict[str, float]) -> None:
        if not self.enabled:
            return
        kl = m.get("kl", 0.0)
        pg = m.get("actor/pg_loss", 0.0)
        vf = m.get("critic/vf_loss", 0.0)
        print(
            f"  iter {it:3d}/{total} | reward {m.get('train/reward', 0):.3f} | pass {m.get('train/pass_rate', 0):.2f}"
            f" | kl {kl:.4f} | pg {pg:+.3f} | vf {vf:.3f} | {m.get('rollout/tokens_per_second', 0):.0f} tok/s"
            f" | {m.get('time/iteration', 0):.1f}s",
            flush=True,
        )
        if "time/overhead" in m:
            print(f"           time {timing_line(m)}", flush=True)
