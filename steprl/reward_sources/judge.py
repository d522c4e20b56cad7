"""The ``judge`` source: a strong model rates each step through an OpenAI-compatible chat endpoint.

The judge sees the user's query, the intermediate tool calls with their results, and the final
answer, and reports through one structured object, ``evaluate_process_reward``:
``succeed_tool_calling`` (0/1 per step), ``contribution_to_final_answer`` (0..5 per step) and
``final_answer_status`` (Solved / Unsure / Unsolved). The schema fixes both list lengths to the
number of steps, so a server that enforces schemas cannot answer with the wrong count; one that
does not is caught by :func:`parse_judge_reply`. ``k`` samples are averaged; a trajectory for which
no sample survives the retries is recorded unscored (see ``judge_client``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from steprl.algorithms.rewards import average_judge_samples, contribution_from_annotation, is_solved_score
from steprl.protocol import Trajectory
from steprl.reward_sources.base import (
    JUDGE_MODEL_ENV,
    JUDGE_URL_ENV,
    RewardSource,
    SourceScores,
    answered,
    register_reward_source,
    tool_steps,
)
from tools_env.suite import Task

FUNCTION_NAME = "evaluate_process_reward"
STATUSES = ("Solved", "Unsure", "Unsolved")

SYSTEM_PROMPT = (
    "You review the work of an assistant that answers questions by calling tools. You are shown the "
    "user's query, every intermediate step (a tool call and what the tool returned) and the final "
    f"answer. Grade the steps and the answer, and report your grades with {FUNCTION_NAME}."
)

INSTRUCTIONS = """Grade the episode below.
For each intermediate step, in order:
- succeed_tool_calling: 1 if the call was well formed, used an available tool with valid arguments and returned a usable result without an error; otherwise 0.
- contribution_to_final_answer: an integer from 0 to 5 for how much the step's result helped reach the final answer (0: no help or misleading, 5: essential).
For the final answer:
- final_answer_status: "Solved" if it fully and correctly answers the query, "Unsure" if it answers only part of it or cannot be checked against the steps, "Unsolved" otherwise (including when there is no final answer).
Both lists must have exactly {n} entries, one per intermediate step."""


class JudgeReplyError(ValueError):
    """A reply that cannot be used; ``kind`` is ``malformed`` or ``wrong_length`` (for the metrics)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class JudgeSample:
    """One parsed judgment: raw 0/1 and 0..5 scores per step and the final answer status."""

    succ_calling: tuple[int, ...]
    contribution: tuple[float, ...]
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "succeed_tool_calling": list(self.succ_calling),
            "contribution_to_final_answer": list(self.contribution),
            "final_answer_status": self.status,
        }


def judge_schema(n_steps: int) -> dict[str, Any]:
    """JSON schema of the judgment for an episode with ``n_steps`` intermediate steps."""

    def scores(values: list[int]) -> dict[str, Any]:
        return {
            "type": "array",
            "items": {"type": "integer", "enum": values},
            "minItems": n_steps,
            "maxItems": n_steps,
        }

    return {
        "type": "object",
        "properties": {
            "succeed_tool_calling": scores([0, 1]),
            "contribution_to_final_answer": scores([0, 1, 2, 3, 4, 5]),
            "final_answer_status": {"type": "string", "enum": list(STATUSES)},
        },
        "required": ["succeed_tool_calling", "contribution_to_final_answer", "final_answer_status"],
        "additionalProperties": False,
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" ...[{len(text) - limit} characters cut]"


def render_step(k: int, step: Any, max_chars: int) -> str:
    """One intermediate step as the judge reads it: the call(s), or the unparsable text, and the result."""
    if step.tool_calls:
        calls = "; ".join(
            f"{c.get('name')}({json.dumps(c.get('arguments'), ensure_ascii=False, sort_keys=True)})"
            for c in step.tool_calls
        )
        head = f"Step {k}: call {calls}"
    else:
        why = f" ({step.parse_error})" if step.parse_error else ""
        head = (
            f"Step {k}: no valid tool call{why}; the assistant wrote: {_clip(step.text.strip(), max_chars)}"
        )
    return f"{head}\nResult: {_clip(step.observation.strip(), max_chars) or '(none)'}"


def render_judge_messages(
    traj: Trajectory, task: Task, max_observation_chars: int = 1000
) -> list[dict[str, str]]:
    """The chat messages asking the judge to grade one trajectory."""
    steps = tool_steps(traj)
    body = [INSTRUCTIONS.format(n=len(steps)), "", f"Query: {task.question}", ""]
    body.append(f"Intermediate steps ({len(steps)}):")
    body += [render_step(k, s, max_observation_chars) for k, s in enumerate(steps, start=1)] or ["(none)"]
    final = traj.final_answer if answered(traj) and traj.final_answer is not None else None
    body += [
        "",
        f"Final answer: {final}"
        if final is not None
        else f"Final answer: none (the episode ended: {traj.end_reason})",
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(body)}]


def request_body(
    messages: list[dict[str, str]],
    n_steps: int,
    model: str,
    mode: str,
    temperature: float,
    max_tokens: int,
    seed: int,
) -> dict[str, Any]:
    """The chat-completions request: the schema forced as a function call (``tool``) or as the
    response format (``json_schema``)."""
    schema = judge_schema(n_steps)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    if mode == "tool":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": FUNCTION_NAME,
                    "description": "Report the grades of the intermediate steps and of the final answer.",
                    "parameters": schema,
                    "strict": True,
                },
            }
        ]
        body["tool_choice"] = {"type": "function", "function": {"name": FUNCTION_NAME}}
    elif mode == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": FUNCTION_NAME, "schema": schema, "strict": True},
        }
    else:
        raise ValueError(f"judge mode must be 'json_schema' or 'tool', got {mode!r}")
    return body


def _reply_object(reply: dict[str, Any]) -> Any:
    """The judgment object of a chat-completions reply: the forced call's arguments, else the content."""
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise JudgeReplyError("malformed", "reply has no choices[0].message") from None
    texts = [tc.get("function", {}).get("arguments") for tc in message.get("tool_calls") or []]
    texts.append(message.get("content"))
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(obj, dict)
            and obj.get("name") == FUNCTION_NAME
            and isinstance(obj.get("arguments"), dict)
        ):
            obj = obj["arguments"]  # a call written into the content
        if isinstance(obj, dict):
            return obj
    raise JudgeReplyError("malformed", "reply holds no JSON object (tool call arguments or content)")


def parse_judge_reply(reply: dict[str, Any], n_steps: int) -> JudgeSample:
    """A checked ``JudgeSample`` from a chat-completions reply, or ``JudgeReplyError``."""
    obj = _reply_object(reply)
    succ, contrib = obj.get("succeed_tool_calling"), obj.get("contribution_to_final_answer")
    status = obj.get("final_answer_status")
    if not isinstance(succ, list) or not isinstance(contrib, list):
        raise JudgeReplyError(
            "malformed", "succeed_tool_calling / contribution_to_final_answer are not lists"
        )
    if len(succ) != n_steps or len(contrib) != n_steps:
        raise JudgeReplyError("wrong_length", f"{len(succ)}/{len(contrib)} scores for {n_steps} steps")
    if any(isinstance(v, bool) or v not in (0, 1) for v in succ):
        raise JudgeReplyError("malformed", f"succeed_tool_calling must be 0/1, got {succ}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 5 for v in contrib):
        raise JudgeReplyError("malformed", f"contribution_to_final_answer must be in 0..5, got {contrib}")
    label = str(status).strip().removeprefix("AnswerStatus.").capitalize() if status is not None else ""
    if label not in STATUSES:
        raise JudgeReplyError("malformed", f"final_answer_status must be one of {STATUSES}, got {status!r}")
    return JudgeSample(tuple(int(v) for v in succ), tuple(float(v) for v in contrib), label)


def aggregate_samples(samples: list[JudgeSample | None]) -> SourceScores:
    """Average the usable samples: SuccCalling in [0, 1], Contribution / 5, IsSolved 1 / 0.5 / 0."""
    valid = [s for s in samples if s is not None]
    meta = {"judge_samples": len(valid), "judge_requested": len(samples)}
    if not valid:
        return SourceScores(unscored=f"no usable judge reply in {len(samples)} samples", meta=meta)
    succ = average_judge_samples([[float(v) for v in s.succ_calling] for s in valid])
    contrib = average_judge_samples(
        [[contribution_from_annotation(v) for v in s.contribution] for s in valid]
    )
    solved = average_judge_samples([is_solved_score(s.status) for s in valid])
    return SourceScores(succ_calling=succ, contribution=contrib, is_solved=solved, meta=meta)  # type: ignore[arg-type]


@register_reward_source("judge")
class JudgeSource(RewardSource):
    """k judge samples per trajectory, sent concurrently; replies cached by prompt, model and sample."""

    def __init__(self, cfg: Any, env: Any) -> None:
        super().__init__(cfg, env)
        from steprl.reward_sources.judge_client import JudgeCache, JudgeClient

        url = cfg.judge_url or env.get(JUDGE_URL_ENV, "")
        model = cfg.judge_model or env.get(JUDGE_MODEL_ENV, "")
        if not url or not model:
            raise ValueError(
                f"the judge source needs reward.judge_url and reward.judge_model (or {JUDGE_URL_ENV} / {JUDGE_MODEL_ENV})"
            )
        self.model = model
        self.client = JudgeClient(
            url,
            api_key=env.get(cfg.judge_api_key_env) if cfg.judge_api_key_env else None,
            concurrency=cfg.judge_concurrency,
            timeout=cfg.judge_timeout,
            max_retries=cfg.judge_max_retries,
            backoff=cfg.judge_backoff,
            cache=JudgeCache(cfg.judge_cache_dir or None),
        )

    def requests(self, trajs: list[Trajectory], tasks: list[Task]) -> list[tuple[dict[str, Any], int]]:
        """(request body, number of steps) for every trajectory x sample, trajectory-major."""
        c = self.cfg
        out = []
        for traj, task in zip(trajs, tasks, strict=True):
            messages = render_judge_messages(traj, task, c.judge_max_observation_chars)
            n = len(tool_steps(traj))
            for j in range(c.judge_samples):
                body = request_body(
                    messages,
                    n,
                    self.model,
                    c.judge_mode,
                    c.judge_temperature,
                    c.judge_max_tokens,
                    c.judge_seed + j,
                )
                out.append((body, n))
        return out

    def score(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        return asyncio.run(self.score_async(trajs, tasks))

    async def score_async(self, trajs: list[Trajectory], tasks: list[Task]) -> list[SourceScores]:
        k = self.cfg.judge_samples
        samples = await self.client.judge_all(self.requests(trajs, tasks))
        return [aggregate_samples(samples[i * k : (i + 1) * k]) for i in range(len(trajs))]

    def pop_metrics(self) -> dict[str, float]:
        return self.client.pop_metrics()
