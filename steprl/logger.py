"""Metrics to the console, JSONL and TensorBoard; curves as PNG; a final summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """One row per ``log`` call to every backend in ``trainer.logger``.

    ``config`` is the run's resolved config (a plain dict) for backends that record it (wandb); by
    default it is read from ``<run_dir>/config.yaml``, which ``steprl.main`` writes before training.
    """

    def __init__(self, run_dir: Path, backends: list[str], config: dict[str, Any] | None = None) -> None:
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

            os.environ.setdefault("WANDB_MODE", "offline")  # WANDB_MODE=online (and a login) uploads
            self.wandb = wandb.init(
                dir=str(run_dir),
                project=os.environ.get("WANDB_PROJECT", "steprl"),
                name=Path(run_dir).name,
                config=config if config is not None else run_config(run_dir),
            )
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


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run wrote to ``config.yaml`` (empty if there is none)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def curve_groups(keys: list[str]) -> dict[str, list[str]]:
    """Keys grouped by the quantity they measure (the name after the ``train/``/``eval/`` prefix).

    ``train/pass_rate`` and ``eval/pass_rate`` share an axis; ``train/reward`` gets its own, since a
    return and a rate in [0, 1] on one axis flatten whichever has the smaller range.
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split("/", 1)[-1], []).append(key)
    return groups


def curve_figure(history: list[dict[str, Any]], keys: list[str], title: str):
    """One subplot per quantity (:func:`curve_groups`), sharing the iteration axis; None if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for key in keys:
        pts = [(r["step"], r[key]) for r in history if isinstance(r.get(key), int | float)]
        if pts:
            series[key] = pts
    groups = list(curve_groups(list(series)).items())
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.6 * len(groups)), sharex=True, squeeze=False)
    for ax, (name, ks) in zip(axes[:, 0], groups, strict=True):
        for key in ks:
            xs, ys = zip(*series[key], strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("iteration")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict[str, Any]], path: Path, keys: list[str], title: str) -> Path | None:
    """``curves.png``: :func:`curve_figure` saved to ``path`` (None when no key was logged)."""
    import matplotlib.pyplot as plt

    fig = curve_figure(history, keys, title)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
