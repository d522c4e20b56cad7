"""The shared training step without Ray: the prepare stage on a context that is not the Controller.

Worker groups are replaced by objects answering ``gather_rows`` with fixed tensors (the stage only moves
tensors between them), so what is checked is the stage's own arithmetic: advantages are whitened exactly
once, by the estimator's definition or ``algorithm.whiten_advantages``, never twice.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import steprl.algorithms.advantages as adv_module
from steprl.algorithms.advantages import AdvantageConfig, estimate_advantages
from steprl.algorithms.kl import FixedKLController
from steprl.algorithms.losses import masked_whiten
from steprl.config import StepRLConfig
from steprl.methods import Method
from steprl.progress import StageTimer
from steprl.protocol import StepRecord, Trajectory, collate
from steprl.step import Rollout, prepare


def _traj(rng: random.Random, group: str) -> Trajectory:
    """An episode of 1-3 steps (action tokens, then a tool result) in group ``group``."""
    t = Trajectory(task_id=group, prompt_ids=[1, 2, 3], group_id=group)
    n_steps = rng.randint(1, 3)
    for k in range(n_steps):
        n = rng.randint(1, 3)
        t.append([5] * n, is_action=True, step=k, logprobs=[-0.5] * n)
        if k < n_steps - 1:
            t.append([7, 7], is_action=False, step=k)
    t.steps = [
        StepRecord(text=f"s{k}", reward=rng.random(), is_final=k == n_steps - 1) for k in range(n_steps)
    ]
    t.done, t.end_reason, t.is_solved = True, "answer", float(rng.random() < 0.5)
    t.validate()
    return t


class _Rows:
    """A worker group answering ``gather_rows`` with one fixed [B, T] tensor per method name."""

    def __init__(self, **by_method: torch.Tensor) -> None:
        self.by_method = by_method

    def gather_rows(self, method: str, data: dict) -> torch.Tensor:
        return self.by_method[method]


def _context(trajs: list[Trajectory], estimator: str, whiten: bool | None) -> SimpleNamespace:
    batch = collate(trajs, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(batch.input_ids.shape, generator=gen)
    logprobs = -torch.rand(batch.input_ids.shape, generator=gen)
    return SimpleNamespace(
        cfg=StepRLConfig(),
        pad_id=0,
        reward_normalizer=None,
        timer=StageTimer(),
        actor=_Rows(compute_logprobs=logprobs),
        ref=None,
        critic=_Rows(compute_values=values) if estimator not in ("grpo", "rloo", "reinforce_pp") else None,
        use_is=False,
        kl_ctl=FixedKLController(0.0),
        adv_cfg=AdvantageConfig(estimator, whiten=whiten),
        values=values,
    )


@pytest.mark.parametrize(
    ("estimator", "whiten", "expected_whitenings"),
    [
        ("step_gae", True, 1),  # the value-based algorithm groups set whiten_advantages: true
        ("step_gae", None, 0),
        ("grpo", None, 0),  # the group baseline is the normalization: not whitened again
        ("rloo", None, 0),
        ("grpo", True, 1),
        ("reinforce_pp", None, 1),  # its definition whitens: once, not in the estimator and again
        ("steptool_compat", None, 1),
        ("steptool_compat", False, 0),
    ],
)
def test_prepare_whitens_advantages_exactly_once(monkeypatch, estimator, whiten, expected_whitenings):
    rng = random.Random(3)
    trajs = [_traj(rng, g) for g in "aabbbc"]
    ctx = _context(trajs, estimator, whiten)
    calls: list[int] = []

    def counting_whiten(x, mask, *args, **kwargs):
        calls.append(1)
        return masked_whiten(x, mask, *args, **kwargs)

    monkeypatch.setattr(adv_module, "masked_whiten", counting_whiten)
    prep = prepare(ctx, Rollout(trajs), Method())
    assert len(calls) == expected_whitenings
    batch = prep.batch
    raw = estimate_advantages(batch, ctx.values if ctx.critic else None, ctx.adv_cfg).advantages
    want = masked_whiten(raw, batch.action_mask) if expected_whitenings else raw
    assert torch.allclose(prep.data["advantages"], want, atol=1e-6)
    assert prep.metrics["advantage_abs_mean"] == pytest.approx(
        float(raw.abs()[batch.action_mask].mean()), rel=1e-5
    )
    if ctx.critic is not None:  # the critic's explained variance of its targets, before its update
        out = estimate_advantages(batch, ctx.values, ctx.adv_cfg)
        m = out.value_mask
        residual = (out.returns - ctx.values)[m]
        want_ev = 1 - float(residual.var(unbiased=False)) / float(out.returns[m].var(unbiased=False))
        assert prep.metrics["critic_explained_variance"] == pytest.approx(want_ev, rel=1e-5)
    if expected_whitenings:  # whitened over the action tokens: mean 0, unbiased var 1
        a = prep.data["advantages"][batch.action_mask]
        assert float(a.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(a.var()) == pytest.approx(1.0, abs=1e-3)


def test_methods_depend_on_the_context_not_on_the_controller():
    """No method module imports ``steprl.controller`` (they see ``steprl.context.MethodContext``)."""
    methods = Path(__file__).resolve().parents[1] / "steprl" / "methods"
    for path in sorted(methods.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "steprl.controller" not in imported, path.name


def test_prefetcher_trains_one_batch_behind_and_syncs_before_each_submission():
    """Batch k+1 is drawn and submitted right after the newest policy was synced; batch k comes back
    with its staleness (actor updates since its submission) and the sync's seconds."""
    from steprl.prefetch import Prefetcher

    events: list[str] = []
    state = {"actor": 0, "drawn": 0}

    def draw() -> list[str]:
        state["drawn"] += 1
        events.append(f"draw{state['drawn']}")
        return [f"task{state['drawn']}"]

    def produce(tasks: list[str], it: int) -> Rollout:
        return Rollout(metrics={"it": float(it)}, payload=tasks)

    def sync() -> float:
        events.append(f"sync@{state['actor']}")
        return 0.25

    pre = Prefetcher(produce, draw, sync, lambda: state["actor"], last_iteration=3)
    try:
        got = []
        for it in (1, 2, 3):
            r = pre.take(it)
            got.append((r.payload, r.metrics["it"], r.metrics["async/staleness"], r.sync_seconds))
            assert pre.in_flight() == ([f"task{it + 1}"] if it < 3 else [])
            state["actor"] += 1  # this iteration's update
        # iteration 1 is on-policy; later batches were submitted one update before they are trained on
        assert got == [(["task1"], 1.0, 0.0, 0.25), (["task2"], 2.0, 1.0, 0.25), (["task3"], 3.0, 1.0, 0.25)]
        assert events == ["draw1", "sync@0", "draw2", "sync@1", "draw3", "sync@2"]
    finally:
        pre.shutdown()
