"""Training methods (registry): what one iteration of a recipe does differently.

The loop around it is shared (``steprl.main.train``): start the actor, optional SFT cold start, start
the rollout / reward / reference / critic workers, evaluate, then ``method.iteration(ctx, it)`` for
``trainer.total_iterations`` with logging, progress and checkpoints, then evaluate again. An iteration
is the shared step of ``steprl.step`` (collect -> prepare -> update -> finish); a method overrides only
the stage that makes it different (:meth:`Method.collect`, :meth:`Method.prepare`,
:meth:`Method.advantages`, :meth:`Method.update`), as a short function, and sees the trainer only
through :class:`steprl.context.MethodContext`. Register yours with ``@register_method("name")`` and
select it with ``trainer.method=name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from steprl import step
from steprl.step import Prepared, Rollout

if TYPE_CHECKING:
    import torch

    from steprl.algorithms.advantages import AdvantageOutput
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


class Method:
    """One training method: by default the PPO family's step (the estimator from ``algorithm.estimator``).
    Subclasses override the stages that differ (and :meth:`setup` if needed)."""

    name = "base"
    needs_ref = False  # start the reference worker even when algorithm.kl_coef == 0 (e.g. DPO)
    # data.format values this method accepts ("steptool_sft_json" feeds the shared SFT cold start)
    data_formats: tuple[str, ...] = ("suite", "steptool_sft_json")
    # trainer.async_rollout: the method's collect is the default one (ctx.rollout_batch, one step off)
    supports_async = False

    def actor_class(self) -> type | None:
        """The actor worker class, if the method needs more than ``workers.fsdp.ActorWorker``."""
        return None

    def check_config(self, cfg: StepRLConfig) -> str | None:
        """A one-line problem with ``cfg`` for this method, or None (called by ``steprl.validation.validate``):
        the checks every method shares, then the method's own :meth:`check`."""
        if cfg.data.format not in self.data_formats:
            return f"data.format={cfg.data.format} is not used by this method (accepted: {self.data_formats})"
        if cfg.trainer.async_rollout and not self.supports_async:
            return (
                "trainer.async_rollout=true needs a method that trains on its own rollouts through the "
                "shared PPO iteration"
            )
        return self.check(cfg)

    def check(self, cfg: StepRLConfig) -> str | None:
        """The method's own one-line config problem, or None (override this, not ``check_config``)."""
        return None

    def setup(self, ctx: MethodContext) -> None:
        """Called once after the shared workers started (e.g. build extra workers or datasets)."""

    # ---- the stages (steprl.step runs them; finish is shared and not overridden)
    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        """Scored episodes of ``trainer.tasks_per_iteration`` tasks x ``rollout.group_size``."""
        return ctx.rollout_batch(it)

    def prepare(self, ctx: MethodContext, rollout: Rollout) -> Prepared:
        """Reward normalization, log-probs, values, :meth:`advantages` (whitened once)."""
        return step.prepare(ctx, rollout, self)

    def advantages(
        self,
        ctx: MethodContext,
        prep: Prepared,
        values: torch.Tensor | None,
        extra: torch.Tensor | None,
    ) -> AdvantageOutput:
        """Raw (unwhitened) advantages of ``prep.batch``; ``extra``: KL token rewards or None."""
        return step.estimator_advantages(ctx, prep, values, extra)

    def update(self, ctx: MethodContext, prep: Prepared) -> dict[str, float] | None:
        """Train on the prepared batch; None when nothing was trained (no sync, no KL step)."""
        return step.ppo_update(ctx, prep)

    def iteration(self, ctx: MethodContext, it: int) -> dict[str, float]:
        return step.iteration(ctx, self, it)


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> Method:
    _load_builtin()
    if name not in METHODS:
        raise KeyError(f"unknown trainer.method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]()


def _load_builtin() -> None:
    # each registers itself (ARPO, ArCHer, CodeTool: recipes part B; SFT, RFT, ETO, TRICE: part A)
    from steprl.methods import archer, arpo, codetool, eto, ppo, rft, sft, trice  # noqa: F401
