"""DFSDT-style decoding (depth-first search over a decision tree, as in ToolBench) for evaluation.

A node is an episode prefix (prompt + steps so far). Expanding a node samples ONE candidate next step,
executes it, and classifies it; a node is expanded at most ``width`` times, lazily: the next sibling is
only sampled when every earlier one failed. The rule, which never looks at the task's answer:

* a step that failed (did not parse, ran out of turn tokens, or any of its tool calls failed) is a dead
  branch: try the node's next candidate (a *backtrack*);
* an episode that hit a budget (``max_turns`` / ``max_response_tokens``) without answering is dead too;
* a final answer is *accepted* and ends the search unless it is empty, gives up (ReAct's
  ``give_up_and_restart`` or give-up phrasing) or, with ``require_grounding``, looks wrong: no tool call
  on its path succeeded, or it shares no content token (number or word) with any successful tool result.
  A rejected answer is a dead branch;
* a step whose calls all succeeded is descended into, depth first; when its subtree is exhausted the
  search returns to the parent and samples the parent's next candidate.

The search stops at the first accepted answer, when the tree is exhausted, or when ``max_calls`` model
calls (generated turns, ToolBench's query budget) are spent. Without an accepted answer it returns the
first rejected answer, else the deepest path (an open path is marked truncated, ``end_reason="no_action"``).

Tool sessions are replayed, not forked: a node remembers the tool calls on its path, and before a
candidate is executed the search makes sure its session has executed exactly that prefix, opening a fresh
session and replaying the calls when it has not (after a backtrack). Replayed outputs are compared with the
recorded ones; a mismatch (a non-deterministic tool) is counted, and the recorded tokens are kept.
Searches of many tasks advance in lockstep so the engine sees a batch, one candidate per task per call.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

from steprl.chat import ChatEncoder
from steprl.engines.base import Generation, RolloutEngine
from steprl.episode import EpisodeBudget, _advance, _Live, task_encoder
from steprl.protocol import StepRecord, Trajectory
from tools_env.parsers import GIVE_UP_ANSWER, ToolCall
from tools_env.suite import Task


@dataclass(frozen=True)
class DFSDTConfig:
    width: int = 2  # candidates sampled per node at most
    max_calls: int = 12  # model calls (generated turns) per task, over the whole tree
    require_grounding: bool = True  # reject answers that share nothing with a successful tool result

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"dfsdt width must be >= 1, got {self.width}")
        if self.max_calls < 1:
            raise ValueError(f"dfsdt max_calls must be >= 1, got {self.max_calls}")


@dataclass
class SearchStats:
    model_calls: int = 0
    backtracks: int = 0  # candidates sampled at a node whose previous candidate failed
    tool_calls: int = 0  # tool calls executed by candidates (not counting replays)
    replayed_calls: int = 0
    replay_mismatches: int = 0
    sessions_opened: int = 0
    max_depth: int = 0
    generated_tokens: int = 0
    accepted: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)  # one per candidate, in search order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_GIVE_UP = re.compile(
    r"give[ _-]?up|\bi (?:can ?not|can't|don't know|do not know|am unable|was unable)\b|\bunable to\b"
    r"|\bno answer\b|\bsorry\b",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "that",
        "this",
        "was",
        "were",
        "are",
        "has",
        "have",
        "had",
        "not",
        "but",
        "you",
        "your",
        "its",
        "his",
        "her",
        "their",
        "what",
        "which",
        "who",
        "how",
        "is",
        "of",
        "to",
        "in",
        "on",
    ]
)


def content_tokens(text: str) -> set[str]:
    """Numbers and words of 3+ letters (lower case, minus a few stop words): what grounding compares."""
    found = re.findall(r"-?\d+(?:\.\d+)?|[^\W\d_]{3,}", text.lower())
    return {t for t in found if t not in _STOPWORDS}


def answer_verdict(answer: str | None, steps: list[StepRecord], require_grounding: bool = True) -> str | None:
    """None if the final answer is accepted, else why it looks given up or wrong (never uses the truth)."""
    text = (answer or "").strip()
    if not text:
        return "empty answer"
    if text == GIVE_UP_ANSWER or _GIVE_UP.search(text):
        return "gave up"
    if not require_grounding:
        return None
    results = [c["output"] for s in steps for c in s.info.get("calls", []) if c.get("ok")]
    if not results:
        return "no successful tool call before the answer"
    if not content_tokens(text) & content_tokens("\n".join(results)):
        return "shares nothing with any tool result"
    return None


def step_failed(step: StepRecord) -> bool:
    """The step did not parse, was cut by the turn budget, or one of its calls failed."""
    return step.parse_error is not None or (not (step.is_final or step.is_reply) and step.succ_calling < 1.0)


def _call_prefix(traj: Trajectory) -> list[list[dict[str, Any]]]:
    return [s.tool_calls for s in traj.steps if s.tool_calls]


class _Cursor:
    """The one live tool session of a search, positioned at some node's call prefix by replay."""

    def __init__(self, env: Any, task: Task, stats: SearchStats) -> None:
        self.env, self.task, self.stats = env, task, stats
        self.session_id: str | None = None
        self.executed: list[list[dict[str, Any]]] = []

    def at(self, traj: Trajectory) -> str:
        prefix = _call_prefix(traj)
        if self.session_id is not None and self.executed == prefix:
            return self.session_id
        self.close()
        self.session_id = self.env.open_session(self.task)
        self.stats.sessions_opened += 1
        for step in (s for s in traj.steps if s.tool_calls):
            outcomes = self.env.call(
                self.session_id, [ToolCall(c["name"], c["arguments"]) for c in step.tool_calls]
            )
            self.stats.replayed_calls += len(outcomes)
            recorded = [c.get("output") for c in step.info.get("calls", [])]
            self.stats.replay_mismatches += int([o.output for o in outcomes] != recorded)
        self.executed = prefix
        return self.session_id

    def close(self) -> dict[str, Any] | None:
        state = None
        if self.session_id is not None:
            state = self.env.close_session(self.session_id)
        self.session_id, self.executed = None, []
        return state


@dataclass
class _Node:
    traj: Trajectory
    messages: list[dict[str, Any]]
    depth: int


Request = tuple[list[int], int]  # (prompt ids, max new tokens)


class _Search:
    """One task's depth-first search, written as a generator that yields engine requests."""

    def __init__(self, task: Task, env: Any, encoder: ChatEncoder, parse: Any, budget: EpisodeBudget,
                 cfg: DFSDTConfig) -> None:  # fmt: skip
        self.task, self.env, self.encoder, self.parse = task, env, encoder, parse
        self.budget, self.cfg = budget, cfg
        self.stats = SearchStats()
        self.cursor = _Cursor(env, task, self.stats)
        self.accepted: Trajectory | None = None
        self.rejected: Trajectory | None = None  # first answer that was not accepted
        self.deepest: Trajectory | None = None

    def run(self) -> Generator[Request, Generation, Trajectory]:
        messages, prompt_ids = self.encoder.start(self.task.question)
        traj = Trajectory(task_id=self.task.task_id, prompt_ids=prompt_ids, group_id=self.task.task_id)
        traj.meta["suite"] = self.task.suite
        yield from self._expand(_Node(traj, messages, 0))
        return self._finish()

    def _expand(self, node: _Node) -> Generator[Request, Generation, bool]:
        """Sample up to ``width`` candidates under ``node``; True once an answer was accepted below it."""
        for k in range(self.cfg.width):
            if self.stats.model_calls >= self.cfg.max_calls:
                return False
            if k > 0:
                self.stats.backtracks += 1
            room = self.budget.max_response_tokens - len(node.traj.response_ids)
            gen = yield (
                node.traj.prompt_ids + node.traj.response_ids,
                max(1, min(self.budget.max_tokens_per_turn, room)),
            )
            self.stats.model_calls += 1
            self.stats.generated_tokens += len(gen.token_ids)
            child = self._apply(node, gen)
            outcome = self._classify(child)
            self.stats.events.append({"depth": node.depth, "candidate": k, "outcome": outcome})
            if outcome == "accepted":
                self.accepted = child.traj
                return True
            if outcome == "descend" and (yield from self._expand(child)):
                return True
        return False

    def _apply(self, node: _Node, gen: Generation) -> _Node:
        """The child node: the episode loop's own step semantics, on copies of the parent's episode."""
        live = _Live(copy.deepcopy(node.traj), self.task, list(node.messages), self.cursor.at(node.traj), 0)
        live.turn = sum(s.is_reply for s in node.traj.steps)  # a conversation goes on at its user turn
        live.traj.meta["open"] = _advance(live, gen, self.env, self.encoder, self.parse, self.budget)
        step = live.traj.steps[-1]
        if step.tool_calls:
            self.stats.tool_calls += len(step.tool_calls)
            self.cursor.executed = _call_prefix(live.traj)
        child = _Node(live.traj, live.messages, node.depth + 1)
        self.stats.max_depth = max(self.stats.max_depth, child.depth)
        if self.deepest is None or child.traj.num_steps > self.deepest.num_steps:
            self.deepest = child.traj
        return child

    def _classify(self, child: _Node) -> str:
        traj, step = child.traj, child.traj.steps[-1]
        if not traj.meta["open"] and traj.end_reason == "answer":
            why = answer_verdict(traj.final_answer, traj.steps, self.cfg.require_grounding)
            if why is None:
                return "accepted"
            if self.rejected is None:
                self.rejected = traj
            return f"rejected: {why}"
        if not traj.meta["open"]:
            return f"ended: {traj.end_reason}"
        return "failed step" if step_failed(step) else "descend"

    def _finish(self) -> Trajectory:
        traj = self.accepted or self.rejected or self.deepest
        self.stats.accepted = self.accepted is not None
        if traj is None:  # only when the budget allowed no call at all (cannot happen with max_calls >= 1)
            raise RuntimeError(f"{self.task.task_id}: the search generated nothing")
        if traj.meta.pop("open"):  # abandoned mid-episode: the policy was stopped before acting further
            traj.end_reason, traj.truncated, traj.done = "no_action", True, False
        self.cursor.at(traj)  # the final state of exactly this path (stateful suites check it)
        traj.meta["final_state"] = self.cursor.close()
        traj.meta["search"] = self.stats.to_dict()
        traj.validate()
        return traj


def run_dfsdt(
    engine: RolloutEngine,
    env: Any,
    encoders: dict[str, ChatEncoder],
    parse: Any,
    tasks: list[Task],
    budget: EpisodeBudget,
    cfg: DFSDTConfig,
    temperature: float = 1.0,
    seed: int | None = None,
) -> list[Trajectory]:
    """One DFSDT search per task (lockstep over tasks); each returns its chosen path as a Trajectory."""
    searches = [_Search(t, env, task_encoder(encoders, t), parse, budget, cfg) for t in tasks]
    gens = [s.run() for s in searches]
    results: list[Trajectory | None] = [None] * len(tasks)
    pending: dict[int, Request] = {}
    try:
        for i, g in enumerate(gens):
            _step(g, None, i, pending, results)
        round_ = 0
        while pending:
            order = sorted(pending)
            outs = engine.generate(
                [pending[i][0] for i in order],
                [pending[i][1] for i in order],
                temperature,
                None if seed is None else seed + 7919 * round_,
            )
            for i, out in zip(order, outs, strict=True):
                _step(gens[i], out, i, pending, results)
            round_ += 1
    finally:
        for s in searches:  # an exception mid-search must not leak sessions on a shared tool server
            s.cursor.close()
    return [r for r in results if r is not None]


def _step(
    gen: Generator, value: Generation | None, i: int, pending: dict[int, Request], results: list
) -> None:
    try:
        pending[i] = gen.send(value)
    except StopIteration as stop:
        pending.pop(i, None)
        results[i] = stop.value
