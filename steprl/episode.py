"""The multi-turn episode loop: generate a turn, parse it, run the tools, append the result, repeat.

All live episodes advance in lockstep, one turn per engine call, so the engine sees a full batch.
Tokens are kept as ids from start to end: generated ids go in as they came out, tool results are
appended as chat-template deltas with ``obs_mask`` set, and history is never re-tokenized.

A task may be a conversation: when the agent answers and the suite has a next user message
(``Suite.user_turn``: the task's scripted follow-ups, or a simulated user), that answer is a *reply*
step, the user's message is appended like a tool result (an observation: masked, no reward), the
state snapshot after the turn is kept for the per-turn check, and the episode goes on. It ends after
the answer to the last user turn, or on the turn/token budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from steprl.chat import ChatEncoder
from steprl.engines.base import RolloutEngine
from steprl.protocol import StepRecord, Trajectory
from tools_env.parsers import ParsedTurn, ToolCall
from tools_env.suite import Suite, Task, get_suite, select_tools


class PromptTooLong(ValueError):
    """A task's prompt does not fit the context budget (it is never cut)."""


@dataclass(frozen=True)
class EpisodeBudget:
    max_turns: int = 6  # assistant turns (tool calls + the answer)
    max_response_tokens: int = 512  # everything after the prompt, actions and observations
    max_tokens_per_turn: int = 96
    max_prompt_tokens: int | None = None  # context budget of a prompt (None: unchecked)


@dataclass
class _Live:
    traj: Trajectory
    task: Task
    messages: list[dict[str, Any]]
    session_id: str
    index: int
    # what it takes to rebuild the episode's state in a new session (fork_episode): the calls each
    # step executed, and the length of ``messages`` after each step
    calls: list[list[ToolCall]] = field(default_factory=list)
    message_marks: list[int] = field(default_factory=list)
    prompt_messages: int = 0
    turn: int = 0  # the user turn being answered (0 = the question)


LiveEpisode = _Live  # public name for methods that drive episodes turn by turn (ARPO, CodeTool)


def open_episode(
    env: Any, encoders: dict[str, ChatEncoder], task: Task, index: int = 0, group_id: str | None = None
) -> _Live:
    """A new episode at its prompt, with its own environment session."""
    messages, prompt_ids = task_encoder(encoders, task).start(task.question)
    traj = Trajectory(task_id=task.task_id, prompt_ids=prompt_ids, group_id=group_id or task.task_id)
    traj.meta["suite"] = task.suite
    return _Live(traj, task, messages, env.open_session(task), index, prompt_messages=len(messages))


def fork_episode(ep: _Live, env: Any, num_steps: int, index: int) -> _Live:
    """A copy of ``ep`` as it was after its first ``num_steps`` steps, in a new session.

    The new session is brought to the same state by replaying the calls of those steps (tools
    are expected to be deterministic; a replay whose outputs differ sets ``meta["replay_mismatch"]``).
    Token ids are copied, never re-tokenized: the fork shares the exact prefix.
    """
    if not 0 <= num_steps <= len(ep.message_marks):
        raise ValueError(f"cannot fork at step {num_steps}: the episode has {len(ep.message_marks)} steps")
    src = ep.traj
    cut = sum(1 for s in src.step_index if s < num_steps)
    traj = Trajectory(
        task_id=src.task_id,
        prompt_ids=list(src.prompt_ids),
        response_ids=src.response_ids[:cut],
        action_mask=src.action_mask[:cut],
        obs_mask=src.obs_mask[:cut],
        step_index=src.step_index[:cut],
        rollout_logprobs=src.rollout_logprobs[:cut],
        steps=copy.deepcopy(src.steps[:num_steps]),
        group_id=src.group_id,
        meta={k: copy.deepcopy(v) for k, v in src.meta.items() if k != "final_state"},
    )
    start = ep.message_marks[num_steps - 1] if num_steps else ep.prompt_messages
    session = env.open_session(ep.task)
    for step, calls in zip(traj.steps, ep.calls[:num_steps], strict=True):
        if calls:
            outcomes = env.call(session, calls)
            if [o.to_dict() for o in outcomes] != step.info.get("calls"):
                traj.meta["replay_mismatch"] = True
    fork = _Live(
        traj, ep.task, copy.deepcopy(ep.messages[:start]), session, index, prompt_messages=ep.prompt_messages
    )
    fork.turn = sum(1 for s in traj.steps if s.is_reply)
    fork.calls = [list(c) for c in ep.calls[:num_steps]]
    fork.message_marks = ep.message_marks[:num_steps]
    return fork


def advance_episodes(
    engine: RolloutEngine,
    env: Any,
    encoders: dict[str, ChatEncoder],
    parse: Any,
    live: list[_Live],
    budget: EpisodeBudget,
    temperature: float,
    seed: int | None,
    entropy_tokens: int = 0,
) -> tuple[list[_Live], list[_Live], list[Any]]:
    """One lockstep turn for every live episode: (still live, finished now, the generations).

    The generations are aligned with ``live``; ``entropy_tokens > 0`` asks the engine for the
    entropies of the first that many tokens of each turn.
    """
    if not live:
        return [], [], []
    for ep in live:
        if not ep.traj.response_ids:
            check_prompt(ep.task, ep.traj.prompt_ids, budget)
    room = [budget.max_response_tokens - len(ep.traj.response_ids) for ep in live]
    extra = {"entropy_tokens": entropy_tokens} if entropy_tokens > 0 else {}
    gens = engine.generate(
        [ep.traj.prompt_ids + ep.traj.response_ids for ep in live],
        [max(1, min(budget.max_tokens_per_turn, r)) for r in room],
        temperature,
        seed,
        **extra,
    )
    still: list[_Live] = []
    finished: list[_Live] = []
    for ep, gen in zip(live, gens, strict=True):
        if _advance(ep, gen, env, task_encoder(encoders, ep.task), parse, budget):
            still.append(ep)
        else:
            finished.append(ep)
    return still, finished, gens


def close_episode(env: Any, ep: _Live) -> Trajectory:
    """Close the session, keep its final state for the checker, and check the invariants."""
    ep.traj.meta["final_state"] = env.close_session(ep.session_id)
    ep.traj.validate()
    return ep.traj


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
    live = [
        open_episode(env, encoders, task, i, group_ids[i] if group_ids else None)
        for i, task in enumerate(tasks)
    ]
    finished: list[_Live] = []
    turn = 0
    while live:
        live, done, _ = advance_episodes(
            engine, env, encoders, parse, live, budget, temperature, turn_seed(seed, turn)
        )
        finished.extend(done)
        turn += 1
    for ep in finished:
        close_episode(env, ep)
    finished.sort(key=lambda ep: ep.index)
    return [ep.traj for ep in finished]


def task_encoder(encoders: dict[str, ChatEncoder], task: Task) -> ChatEncoder:
    """The suite's encoder with only the tools ``task`` may use in its prompt."""
    base = encoders[task.suite]
    if task.tools is None and not task.excluded_tools:
        return base
    return base.with_tools(select_tools(task, base.tool_names()))


def check_prompt(task: Task, prompt_ids: list[int], budget: EpisodeBudget) -> None:
    """Fail on a prompt longer than the context budget, naming the task and the budget."""
    limit = budget.max_prompt_tokens
    if limit is not None and len(prompt_ids) > limit:
        raise PromptTooLong(
            f"task {task.task_id} (suite {task.suite!r}): the prompt is {len(prompt_ids)} tokens, over the "
            f"context budget of {limit} prompt tokens (rollout.max_model_len - rollout.max_response_tokens); "
            "give the task fewer tools (Task.tools) or raise rollout.max_model_len"
        )


@cache
def _suite(name: str) -> Suite:
    return get_suite(name)


def turn_seed(seed: int | None, turn: int) -> int | None:
    """The engine seed of lockstep turn ``turn``."""
    return None if seed is None else seed + 7919 * turn


def _advance(ep: _Live, gen: Any, env: Any, encoder: ChatEncoder, parse: Any, budget: EpisodeBudget) -> bool:
    """Apply one generated turn to an episode; return whether the episode goes on."""
    traj = ep.traj
    k = traj.num_steps
    traj.append(gen.token_ids, is_action=True, step=k, logprobs=gen.logprobs)
    text_ids = gen.token_ids[:-1] if gen.stopped else gen.token_ids
    text = encoder.tokenizer.decode(text_ids, skip_special_tokens=False)
    step = StepRecord(text=text, turn=ep.turn)
    step.info["turn"] = ep.turn
    traj.steps.append(step)
    if not gen.stopped:  # the turn ran out of tokens: cut, bootstrap from the last state
        step.parse_error = "turn did not end before the token budget"
        return _end(traj, "max_tokens", truncated=True)
    parsed = parse_safely(parse, text)
    user = _next_user_message(ep, text) if parsed.is_final else None
    if parsed.is_final and user is None:
        step.is_final, traj.final_answer = True, parsed.final_answer
        return _end(traj, "answer", truncated=False)
    if parsed.is_final:  # a reply: the user speaks again, as an observation of this step
        step.is_reply = True
        step.info.update(answer=parsed.final_answer, calls=[], turn_state=env.snapshot(ep.session_id))
        tool_msgs = [{"role": "user", "content": user}]
        ep.turn += 1
    elif parsed.error:
        step.parse_error = parsed.error
        tool_msgs = [{"role": "tool", "content": f"Error: {parsed.error}"}]
        step.info["calls"] = []
    else:
        outcomes = env.call(ep.session_id, parsed.calls)
        ep.calls.append(list(parsed.calls))
        step.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.calls]
        step.info["calls"] = [o.to_dict() for o in outcomes]
        step.succ_calling = float(all(o.ok for o in outcomes))
        tool_msgs = [{"role": "tool", "content": o.output} for o in outcomes]
    step.observation = "\n".join(m["content"] for m in tool_msgs)
    ep.messages.append({"role": "assistant", "content": text})
    obs_ids = encoder.observation_ids(ep.messages, tool_msgs)
    ep.messages.extend(tool_msgs)
    if parsed.error or parsed.is_final:
        ep.calls.append([])
    ep.message_marks.append(len(ep.messages))
    if len(traj.response_ids) + len(obs_ids) >= budget.max_response_tokens:
        return _end(traj, "max_tokens", truncated=True)  # no room for the result and another turn
    traj.append(obs_ids, is_action=False, step=k)
    if traj.num_steps >= budget.max_turns:
        return _end(traj, "max_turns", truncated=True)
    return True


def parse_safely(parse: Any, text: str) -> ParsedTurn:
    """``parse(text)``, with anything but a ParsedTurn (an exception, another type) as a parse error.

    Registered parsers already never raise; this also covers a bare callable passed as ``parse``.
    """
    try:
        parsed = parse(text)
    except (Exception, RecursionError, MemoryError) as e:  # noqa: BLE001  (model output must not crash)
        return ParsedTurn(error=f"the tool-call parser failed on this turn ({type(e).__name__})")
    if not isinstance(parsed, ParsedTurn):
        return ParsedTurn(error=f"the tool-call parser returned {type(parsed).__name__}, not a ParsedTurn")
    return parsed


def _next_user_message(ep: _Live, reply: str) -> str | None:
    """The user's next message after the agent's ``reply`` (None: the conversation is over)."""
    suite = _suite(ep.task.suite)
    if ep.turn >= suite.max_user_turns:
        return None
    return suite.user_turn(ep.task, ep.turn + 1, [*ep.messages, {"role": "assistant", "content": reply}])


def _end(traj: Trajectory, reason: str, truncated: bool) -> bool:
    traj.end_reason, traj.truncated, traj.done = reason, truncated, not truncated
    return False
