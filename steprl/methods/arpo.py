"""ARPO: entropy-based adaptive branching after tool calls, GRPO over the tree, soft/hard attribution.

One iteration: for every task, ``arpo.initial_rollouts`` (N) episodes start from the prompt; after
each tool result the entropy of the first ``arpo.entropy_window`` generated tokens is compared with
that trajectory's first turn, and the source branches with probability ``clip(alpha + beta * dH, 0, 1)``
into up to ``beam_size - 1`` copies that share its prefix token for token and re-sample the turn,
until the group holds ``rollout.group_size`` (M) trajectories; fresh episodes fill what branching
left short. Rewards (-1 on a format violation, else answer F1 + tool bonus) feed the registered GRPO
estimator; "hard" attribution then gives shared-prefix tokens the mean advantage of their sharers.
ARPO's reward is written as the episode's reward (its last step; ``algorithm.outcome=sum``), so
reward normalization, saved rollouts and the metrics see what is trained on. Only the collect stage and
the advantages differ from the shared step. Formulas: ``steprl.algorithms.arpo``.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from steprl.algorithms.advantages import AdvantageOutput
from steprl.algorithms.arpo import (
    answer_f1,
    arpo_reward,
    attribute_advantages,
    branch_probability,
    num_branches,
    segment_ids_from_cuts,
    window_entropy,
)
from steprl.episode import LiveEpisode, advance_episodes, close_episode, fork_episode, open_episode, turn_seed
from steprl.fault import merge_by_id
from steprl.methods import Method, register_method
from steprl.protocol import Trajectory
from steprl.step import Prepared, Rollout
from tools_env.suite import Task

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext

CRITIC_FREE = ("grpo", "rloo")


@dataclass(frozen=True)
class TreeSpec:
    """What the rollout worker needs to grow ARPO trees (a plain copy of the config's values)."""

    group_size: int  # M: trajectories per prompt
    initial_rollouts: int  # N: trajectories that start from the prompt
    alpha: float
    beta: float
    beam_size: int
    entropy_window: int


def tree_rollout(
    worker: Any, tasks: list[dict[str, Any]], spec: dict[str, Any], temperature: float, seed: int
) -> tuple[list[Trajectory], dict[str, float]]:
    """Grow one ARPO group per task inside a RolloutWorker (called through ``RolloutWorker.run``);
    returns the trajectories, task by task, and the tree statistics.

    Every trajectory carries ``meta["arpo_cuts"]``: ``[start, segment]`` pairs in response
    coordinates (segments are local to this call; rows sharing a prefix share its segments).
    """
    t0 = time.time()
    sp = TreeSpec(**spec)
    rng = random.Random(seed)
    task_objs = [Task.from_dict(t) for t in tasks]
    counter = iter(range(1 << 62))
    remaining = [sp.group_size - sp.initial_rollouts for _ in task_objs]
    owner: dict[int, int] = {}  # id(episode) -> task index
    stats = {"branch_points": 0, "branches": 0, "fills": 0, "p_sum": 0.0, "dh_sum": 0.0}
    done: list[LiveEpisode] = []

    def start(i: int) -> LiveEpisode:
        ep = open_episode(worker.env, worker.encoders, task_objs[i], next(counter))
        ep.traj.meta["arpo_cuts"] = [[0, next(counter)]]
        owner[id(ep)] = i
        return ep

    def grow(live: list[LiveEpisode], turn0: int) -> int:
        turn = turn0
        while live:
            current = live
            live, finished, gens = advance_episodes(
                worker.engine, worker.env, worker.encoders, worker.parse, current, worker.budget,
                temperature, turn_seed(seed, turn), entropy_tokens=sp.entropy_window,
            )  # fmt: skip
            done.extend(finished)
            for ep, gen in zip(current, gens, strict=True):
                live.extend(_maybe_branch(ep, gen))
            turn += 1
        return turn

    def _maybe_branch(ep: LiveEpisode, gen: Any) -> list[LiveEpisode]:
        i, s = owner[id(ep)], ep.traj.num_steps - 1  # s: the step this turn generated
        h = window_entropy(gen.entropies, sp.entropy_window)
        if s == 0:
            ep.traj.meta["arpo_h_initial"] = h
            return []
        h0 = ep.traj.meta.get("arpo_h_initial")
        if remaining[i] <= 0 or h is None or h0 is None or ep.traj.meta.get("arpo_forked_at") == s:
            return []  # a branch does not branch again on the turn it was created to re-sample
        p = branch_probability(h, h0, sp.alpha, sp.beta)
        stats["branch_points"] += 1
        stats["p_sum"] += p
        stats["dh_sum"] += h - h0
        n = num_branches(p, rng.random(), sp.beam_size, remaining[i])
        if n == 0:
            return []
        remaining[i] -= n
        stats["branches"] += n
        cuts = ep.traj.meta["arpo_cuts"]
        at = sum(1 for k in ep.traj.step_index if k < s)  # the shared prefix ends before step s
        shared = [c for c in cuts if c[0] < at]
        ep.traj.meta["arpo_cuts"] = [*shared, [at, next(counter)]]  # the source's own turn s onwards
        forks = []
        for _ in range(n):
            fork = fork_episode(ep, worker.env, s, next(counter))
            fork.traj.meta["arpo_cuts"] = [*shared, [at, next(counter)]]
            fork.traj.meta["arpo_branch_of"] = ep.index
            fork.traj.meta["arpo_forked_at"] = s
            owner[id(fork)] = i
            forks.append(fork)
        return forks

    turn = grow([start(i) for i in range(len(task_objs)) for _ in range(sp.initial_rollouts)], 0)
    fills = [start(i) for i in range(len(task_objs)) for _ in range(max(0, remaining[i]))]
    stats["fills"] = len(fills)
    for i in range(len(task_objs)):
        remaining[i] = 0
    grow(fills, turn)
    for ep in done:
        close_episode(worker.env, ep)
    done.sort(key=lambda ep: (owner[id(ep)], ep.index))
    trajs = [ep.traj for ep in done]
    generated = sum(sum(t.action_mask) for t in trajs)
    return trajs, {
        "rollout/seconds": time.time() - t0,
        "rollout/generated_tokens": generated,
        "arpo/branch_points": stats["branch_points"],
        "arpo/branches": stats["branches"],
        "arpo/fills": stats["fills"],
        "arpo/p_sum": stats["p_sum"],
        "arpo/dh_sum": stats["dh_sum"],
    }


def episode_reward(traj: Trajectory, task: Task, cfg: Any) -> dict[str, float]:
    """ARPO's reward of one scored episode, with the pieces it is made of."""
    format_ok = traj.end_reason == "answer" and not any(s.parse_error for s in traj.steps)
    f1 = answer_f1(traj.final_answer, task.answer) if format_ok else 0.0
    tools = len({c["name"] for s in traj.steps for c in s.tool_calls})
    reward = arpo_reward(
        format_ok, f1, tools, solved=traj.is_solved >= 1.0, format_penalty=cfg.format_penalty,
        tool_bonus=cfg.tool_bonus, bonus_min_tools=cfg.bonus_min_tools,
        bonus_requires_correct=cfg.bonus_requires_correct,
    )  # fmt: skip
    return {"reward": reward, "f1": f1, "format_ok": float(format_ok), "tools": float(tools)}


def set_episode_reward(traj: Trajectory, reward: float) -> None:
    """ARPO's reward is the episode's: on its last step, 0 on the others (``algorithm.outcome=sum``)."""
    for step in traj.steps:
        step.reward = 0.0
    traj.steps[-1].reward = reward


@register_method("arpo")
class ARPO(Method):
    def check(self, cfg: StepRLConfig) -> str | None:
        if cfg.algorithm.estimator not in CRITIC_FREE:
            return f"ARPO is critic-free: algorithm.estimator must be one of {CRITIC_FREE}"
        if cfg.algorithm.outcome != "sum":
            return "ARPO's reward is each episode's step-reward sum: set algorithm.outcome=sum"
        if cfg.arpo.initial_rollouts > cfg.rollout.group_size:
            return "arpo.initial_rollouts (N) must be <= rollout.group_size (M)"
        return None

    def collect(self, ctx: MethodContext, it: int) -> Rollout:
        """Tree rollouts, a group per task (a group never straddles workers), scored, ARPO's reward."""
        c = ctx.cfg
        tasks = ctx.next_tasks()
        spec = asdict(
            TreeSpec(
                c.rollout.group_size, c.arpo.initial_rollouts, c.arpo.alpha, c.arpo.beta,
                c.arpo.beam_size, c.arpo.entropy_window,
            )
        )  # fmt: skip
        t0 = time.time()
        chunks, results = ctx.fan_out(
            tree_rollout, [t.to_dict() for t in tasks], spec, c.rollout.temperature, seed=ctx.rollout_seed(it)
        )
        for w, (part, _) in enumerate(results):  # segments are local to a chunk: make them global
            for t in part:
                t.meta["arpo_cuts"] = [[start, seg * len(chunks) + w] for start, seg in t.meta["arpo_cuts"]]
        groups = [  # each task of a chunk gets its tree, exactly once
            [[t for t in part if t.task_id == tasks[i].task_id] for i in chunk]
            for chunk, (part, _) in zip(chunks, results, strict=True)
        ]
        by_task = merge_by_id(chunks, groups)
        trajs = [t for i in range(len(tasks)) for t in by_task[i]]
        stats = {k: sum(st[k] for _, st in results) for k in results[0][1] if k != "rollout/seconds"}
        seconds = time.time() - t0
        with ctx.timer("reward"):
            trajs = ctx.score(trajs, [tasks[i] for i in range(len(tasks)) for _ in by_task[i]])
        by_id = {t.task_id: t for t in tasks}
        parts = [episode_reward(t, by_id[t.task_id], c.arpo) for t in trajs]
        for t, p in zip(trajs, parts, strict=True):
            set_episode_reward(t, p["reward"])
        n, points = max(len(trajs), 1), max(stats["arpo/branch_points"], 1)
        metrics = {
            "arpo/reward": sum(p["reward"] for p in parts) / n,
            "arpo/f1": sum(p["f1"] for p in parts) / n,
            "arpo/format_ok": sum(p["format_ok"] for p in parts) / n,
            "arpo/branches_per_task": stats["arpo/branches"] / len(tasks),
            "arpo/fills_per_task": stats["arpo/fills"] / len(tasks),
            "arpo/branch_prob": stats["arpo/p_sum"] / points,
            "arpo/entropy_delta": stats["arpo/dh_sum"] / points,
            "arpo/replay_mismatch": sum(bool(t.meta.get("replay_mismatch")) for t in trajs) / n,
        }
        # generation seconds: the slowest chunk (chunks run in parallel), as ctx.generate counts them
        gen_seconds = max((st["rollout/seconds"] for _, st in results), default=seconds)
        return Rollout(trajs, int(stats["rollout/generated_tokens"]), gen_seconds, metrics)

    def advantages(
        self, ctx: MethodContext, prep: Prepared, values: torch.Tensor | None, extra: torch.Tensor | None
    ) -> AdvantageOutput:
        """GRPO over each tree's group, then soft / hard attribution over the shared prefixes."""
        out = super().advantages(ctx, prep, values, extra)
        batch = prep.batch
        cuts = [t.meta["arpo_cuts"] for t in prep.trajectories]
        segments = segment_ids_from_cuts(cuts, batch.prompt_lengths.tolist(), batch.input_ids.shape[1])
        prep.metrics["arpo/shared_token_share"] = shared_share(segments, batch.action_mask)
        adv = attribute_advantages(out.advantages, segments, batch.action_mask, ctx.cfg.arpo.attribution)
        return AdvantageOutput(adv, out.returns, out.value_mask)


def shared_share(segments: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of action tokens that sit in a prefix shared by more than one trajectory."""
    valid = mask & (segments >= 0)
    if not bool(valid.any()):
        return 0.0
    T = segments.shape[1]
    keys = (segments * T + torch.arange(T).expand_as(segments))[valid]
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).float().mean())
