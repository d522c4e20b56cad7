"""Progress on long work: a live bar for SFT and one line per RL iteration."""

from __future__ import annotations

import sys
import time


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
