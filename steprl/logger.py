"""Metrics to the console, JSONL and TensorBoard; curves as PNG; a final summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, backends: list[str]) -> None:
        self.run_dir = run_dir
        self.backends = set(backends)
        unknown = self.backends - {"console", "jsonl", "tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"unknown logger backend(s) {sorted(unknown)}")
        # kept open for the whole run (appended and flushed per row), closed in close()
        self.jsonl = open(run_dir / "metrics.jsonl", "a") if "jsonl" in self.backends else None  # noqa: SIM115
        self.tb = None
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.wandb = None
        if "wandb" in self.backends:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(dir=str(run_dir), config={})
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if self.jsonl:
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def plot_curves(history: list[dict[str, Any]], path: Path, keys: list[str], title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for key in keys:
        pts = [(r["step"], r[key]) for r in history if key in r]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("iteration")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
