"""The reward-source interface and its registry.

A source tells, for each trajectory of a batch, some of the three StepTool components: SuccCalling
and Contribution per intermediate step (tool call) and IsSolved for the final answer. Sources are
asked for a whole batch at once because some (an LLM judge) are fast only when their requests run
concurrently. Which source gives which component is configuration (see :func:`component_plan`).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steprl.protocol import StepRecord, Trajectory
from tools_env.suite import Task

if TYPE_CHECKING:
    from steprl.config import RewardConfig

COMPONENTS = ("succ_calling", "contribution", "is_solved")
JUDGE_URL_ENV, JUDGE_MODEL_ENV = "STEPRL_JUDGE_URL", "STEPRL_JUDGE_MODEL"
logger = logging.getLogger(__name__)


@dataclass
class SourceScores:
    """What one source said about one trajectory; ``None`` = the source does not give that component.

    ``succ_calling``/``contribution`` hold one value in [0, 1] per intermediate step; ``is_solved`` is
    in [0, 1]. ``turn_scores`` (a conversation's per-turn check) holds one value in [0, 1] per answered
    user turn (the replies, then the final answer if there is one), or None when there is no check. ``unscored`` is why the source could not score this trajectory (then the components it
    would have given are missing); ``meta`` is JSON provenance (e.g. how many judge samples counted).
    """

    succ_calling: list[float] | None = None
    contribution: list[float] | None = None
    is_solved: float | None = None
    turn_scores: list[float] | None = None
    unscored: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class RewardSource(ABC):
    """One way of scoring trajectories. Built once per reward worker from the (frozen) reward config.

    ``env`` holds the environment variables the driver captured for the sources (see
    :func:`reward_env`), so a worker on another node sees the same endpoint and key.
    """

    name = "base"
    components: frozenset[str] = frozenset(COMPONENTS)

    def __init__(self, cfg: RewardConfig, env: Mapping[str, str]) -> None:
        if not hasattr(cfg, "source"):
            raise TypeError(
                f"reward source {self.name!r} is built from (RewardConfig, env); to score one trajectory "
                "use workers.reward.score_trajectory(traj, task, source)"
            )
        self.cfg, self.env = cfg, env

    @abstractmethod
    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        """One ``SourceScores`` per trajectory, in order."""

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the last call (summed over reward workers by the controller)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, clients and files."""


REWARD_SOURCES: dict[str, type[RewardSource]] = {}

StepFunction = Callable[[Trajectory, Task], tuple[list[float], list[float], float | None]]


def register_reward_source(name: str, components: tuple[str, ...] = COMPONENTS) -> Callable[[Any], Any]:
    """Register a ``RewardSource`` subclass, or a plain function ``(traj, task) -> (succ, contrib,
    is_solved)`` scoring one trajectory at a time (wrapped into a source giving ``components``)."""
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown reward components {sorted(unknown)}; known: {COMPONENTS}")

    def wrap(obj: Any) -> Any:
        if isinstance(obj, type) and issubclass(obj, RewardSource):
            cls = obj
        elif callable(obj):
            cls = type(f"{name}_source", (_FunctionSource,), {"fn": staticmethod(obj)})
            cls.components = frozenset(components)
        else:
            raise TypeError(f"reward source {name!r} must be a RewardSource subclass or a function")
        cls.name = name
        REWARD_SOURCES[name] = cls
        return obj

    return wrap


class _FunctionSource(RewardSource):
    """A per-trajectory function as a source; what it raises marks the trajectory unscored."""

    fn: StepFunction

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        out = []
        for traj, task in zip(trajs, tasks, strict=True):
            try:
                succ, contrib, solved = self.fn(traj, task)
            except Exception as e:  # a rule that fails on one episode must not stop training
                logger.warning(
                    "reward source %s could not score %s: %s: %s",
                    self.name,
                    traj.task_id,
                    type(e).__name__,
                    e,
                )
                out.append(SourceScores(unscored=f"{type(e).__name__}: {e}"))
                continue
            scores = SourceScores(
                succ_calling=[float(x) for x in succ] if "succ_calling" in self.components else None,
                contribution=[float(x) for x in contrib] if "contribution" in self.components else None,
                is_solved=None if solved is None or "is_solved" not in self.components else float(solved),
            )
            out.append(scores)
        return out


def get_source_class(name: str) -> type[RewardSource]:
    """The registered class; a bare function put into the registry is wrapped (all components)."""
    if name not in REWARD_SOURCES:
        raise KeyError(f"unknown reward source {name!r}; known: {sorted(REWARD_SOURCES)}")
    obj: Any = REWARD_SOURCES[name]
    if isinstance(obj, type) and issubclass(obj, RewardSource):
        return obj
    if callable(obj):
        return type(f"{name}_source", (_FunctionSource,), {"fn": staticmethod(obj), "name": name})
    raise TypeError(f"reward source {name!r} is neither a RewardSource subclass nor a function")


def component_plan(cfg: RewardConfig) -> dict[str, str]:
    """Which source gives each component: ``reward.<component>_source`` if set, else ``reward.source``."""
    return {c: getattr(cfg, f"{c}_source") or cfg.source for c in COMPONENTS}


def sources_in_use(cfg: RewardConfig) -> list[str]:
    """The sources a reward worker must build: those in the plan, then the fallback (if any)."""
    names = list(dict.fromkeys(component_plan(cfg).values()))
    if cfg.unscored_fallback != "zero" and cfg.unscored_fallback not in names:
        names.append(cfg.unscored_fallback)
    return names


def reward_env(cfg: RewardConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables the sources read, captured on the driver and handed to workers."""
    environ = os.environ if environ is None else environ
    keys = (JUDGE_URL_ENV, JUDGE_MODEL_ENV, cfg.judge_api_key_env)
    return {k: environ[k] for k in keys if k and environ.get(k)}


def tool_steps(traj: Trajectory) -> list[StepRecord]:
    """The intermediate steps (tool calls, not answers): one SuccCalling/Contribution each."""
    return [s for s in traj.steps if not (s.is_final or s.is_reply)]


def reply_steps(traj: Trajectory) -> list[StepRecord]:
    """A conversation's replies: answers to the user turns before the last (per-turn check each)."""
    return [s for s in traj.steps if s.is_reply]


def step_kinds(traj: Trajectory) -> list[str]:
    """``tool`` / ``reply`` / ``final`` for each step, in order (what ``shape_conversation_rewards`` reads)."""
    return ["final" if s.is_final else "reply" if s.is_reply else "tool" for s in traj.steps]


def answered(traj: Trajectory) -> bool:
    """Whether the episode ended with a final answer step (only then is there an IsSolved reward)."""
    return bool(traj.steps) and traj.steps[-1].is_final
