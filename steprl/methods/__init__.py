"""Training methods (registry): what one iteration of a recipe does.

The loop around it is shared (``steprl.main.train``): start the actor, optional SFT cold start, start
the rollout / reward / reference / critic workers, evaluate, then ``method.iteration(ctl, it)`` for
``trainer.total_iterations`` with logging, progress and checkpoints, then evaluate again. A method is
the few functions that make it different, not a copy of the trainer. Register yours with
``@register_method("name")`` and select it with ``trainer.method=name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.controller import Controller


class Method:
    """One training method. Subclasses override :meth:`iteration` (and :meth:`setup` if needed)."""

    name = "base"
    needs_ref = False  # start the reference worker even when algorithm.kl_coef == 0 (e.g. DPO)
    # data.format values this method accepts ("steptool_sft_json" feeds the shared SFT cold start)
    data_formats: tuple[str, ...] = ("suite", "steptool_sft_json")
    # trainer.async_rollout: the method gets its rollouts from Controller.rollout_batch (one step off)
    supports_async = False

    def actor_class(self) -> type | None:
        """The actor worker class, if the method needs more than ``workers.fsdp.ActorWorker``."""
        return None

    def check_config(self, cfg: StepRLConfig) -> str | None:
        """A one-line problem with ``cfg`` for this method, or None (called by ``config.validate``):
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

    def setup(self, ctl: Controller) -> None:
        """Called once after the shared workers started (e.g. build extra workers or datasets)."""

    def iteration(self, ctl: Controller, it: int) -> dict[str, float]:
        raise NotImplementedError(f"method {self.name!r} does not define an iteration")


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
