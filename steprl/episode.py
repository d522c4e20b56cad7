"""The multi-turn episode loop: generate a turn, parse it, run the tools, append the result, repeat.

All live episodes advance in lockstep, one turn per engine call, so the engine sees a full batch.
Tokens are kept as ids from start to end: generated ids go in as they came out, tool results are
appended as chat-template deltas with ``obs_mask`` set, and history is never re-tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steprl.chat import ChatEncoder
from steprl.engines.base import RolloutEngine
from steprl.protocol import StepRecord, Trajectory
from tools_env.parsers import ParsedTurn
from tools_env.suite import Task


@dataclass(frozen=True)
class EpisodeBudget:
    max_turns: int = 6  # assistant turns (tool calls + the answer)
    max_response_tokens: int = 512  # everything after the prompt, actions and observations
    max_tokens_per_turn: int = 96


@dataclass
class _Live:
    traj: Trajectory
    task: Task
    messages: list[dict[str, Any]]
    session_id: str
    index: int


def run_episodes(
    engine: RolloutEngine,
    env: Any,
    encoders: dict[str, ChatEncoder],
    parse: Any,
    tasks: list[Task],
    budget: EpisodeBudget,
    temperature: float = 1.0,
    seed: int | None = None,
    group_ids: list[str] | None = None,
) -> list[Trajectory]:
    """Run one episode per task; ``env`` is a ToolEnv or a ToolClient (same methods)."""
    live: list[_Live] = []
    for i, task in enumerate(tasks):
        messages, prompt_ids = encoders[task.suite].start(task.question)
        traj = Trajectory(
            task_id=task.task_id, prompt_ids=prompt_ids, group_id=group_ids[i] if group_ids else task.task_id
        )
        traj.meta["suite"] = task.suite
        live.append(_Live(traj, task, messages, env.open_session(task), i))
    finished: list[_Live] = []
    turn = 0
    while live:
        room = [budget.max_response_tokens - len(ep.traj.response_ids) for ep in live]
        gens = engine.generate(
            [ep.traj.prompt_ids + ep.traj.response_ids for ep in live],
            [max(1, min(budget.max_tokens_per_turn, r)) for r in room],
            temperature,
            None if seed is None else seed + 7919 * turn,
        )
        still: list[_Live] = []
        for ep, gen in zip(live, gens, strict=True):
            if _advance(ep, gen, env, encoders[ep.task.suite], parse, budget):
                still.append(ep)
            else:
                finished.append(ep)
        live = still
        turn += 1
    for ep in finished:
        ep.traj.meta["final_state"] = env.close_session(ep.session_id)
        ep.traj.validate()
    finished.sort(key=lambda ep: ep.index)
    return [ep.traj for ep in finished]


def _advance(ep: _Live, gen: Any, env: Any, encoder: ChatEncoder, parse: Any, budget: EpisodeBudget) -> bool:
    """Apply one generated turn to an episode; return whether the episode goes on."""
    traj = ep.traj
    k = traj.num_steps
    traj.append(gen.token_ids, is_action=True, step=k, logprobs=gen.logprobs)
    text_ids = gen.token_ids[:-1] if gen.stopped else gen.token_ids
    text = encoder.tokenizer.decode(text_ids, skip_special_tokens=False)
    step = StepRecord(text=text)
    traj.steps.append(step)
    if not gen.stopped:  # the turn ran out of tokens: cut, bootstrap from the last state
        step.parse_error = "turn did not end before the token budget"
        return _end(traj, "max_tokens", truncated=True)
    parsed: ParsedTurn = parse(text)
    if parsed.is_final:
        step.is_final, traj.final_answer = True, parsed.final_answer
        return _end(traj, "answer", truncated=False)
    if parsed.error:
        step.parse_error = parsed.error
        tool_msgs = [{"role": "tool", "content": f"Error: {parsed.error}"}]
        step.info["calls"] = []
    else:
        outcomes = env.call(ep.session_id, parsed.calls)
        step.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.calls]
        step.info["calls"] = [o.to_dict() for o in outcomes]
        step.succ_calling = float(all(o.ok for o in outcomes))
        tool_msgs = [{"role": "tool", "content": o.output} for o in outcomes]
    step.observation = "\n".join(m["content"] for m in tool_msgs)
    ep.messages.append({"role": "assistant", "content": text})
    obs_ids = encoder.observation_ids(ep.messages, tool_msgs)
    ep.messages.extend(tool_msgs)
    if len(traj.response_ids) + len(obs_ids) >= budget.max_response_tokens:
        return _end(traj, "max_tokens", truncated=True)  # no room for the result and another turn
    traj.append(obs_ids, is_action=False, step=k)
    if traj.num_steps >= budget.max_turns:
        return _end(traj, "max_turns", truncated=True)
    return True


def _end(traj: Trajectory, reason: str, truncated: bool) -> bool:
    traj.end_reason, traj.truncated, traj.done = reason, truncated, not truncated
    return False
