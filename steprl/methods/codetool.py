"""CodeTool: step rewards from code execution (on-the-spot) and a process reward model (latent).

Setup: exploration trees on ``codetool.tree_tasks`` training tasks (depth D = ``tree_depth``, n =
``tree_width`` candidate steps per node, each leaf completed by ``completions`` rollouts) label
every node with its potential (``codetool.potential``: soft = mean success below it, hard = any
success); siblings with different potentials become PRM examples (``steprl.prm``), and a PRM is
trained from the policy. The reward workers are then rebuilt with Contribution from that PRM.
Training iterations are the controller's step-grained PPO: SuccCalling (the code ran) is the
on-the-spot reward, Contribution (P(yes) of the PRM) the latent one,
``r_t = (alpha * SuccCalling + Contribution) / (1 + alpha)``, ``r_T = IsSolved``, GAE over steps.
Inference (:func:`search_rollout`): sample n candidate steps, follow the one with the largest
on-the-spot + latent reward, up to ``search_depth`` steps. Formulas: ``steprl.algorithms.codetool``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from steprl.algorithms.codetool import (
    node_potentials,
    on_the_spot_reward,
    rollout_outcome,
    select_best,
    sibling_label_pairs,
)
from steprl.episode import (
    LiveEpisode,
    advance_episodes,
    close_episode,
    fork_episode,
    open_episode,
    turn_seed,
)
from steprl.evaluation.metrics import episode_metrics
from steprl.fault import merge_by_id
from steprl.methods import Method, register_method
from steprl.protocol import Trajectory
from tools_env.suite import Task

if TYPE_CHECKING:
    from steprl.config import StepRLConfig
    from steprl.context import MethodContext


def _advance_all(worker: Any, live: list[LiveEpisode], temperature: float, seed: int | None) -> set[int]:
    """One lockstep turn for ``live``; returns the ids of the episodes that ended."""
    _, finished, _ = advance_episodes(
        worker.engine, worker.env, worker.encoders, worker.parse, live, worker.budget, temperature, seed
    )
    return {id(ep) for ep in finished}


def explore_trees(
    worker: Any,
    tasks: list[dict[str, Any]],
    depth: int,
    width: int,
    completions: int,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """Exploration trees inside a RolloutWorker (called through ``RolloutWorker.run``).

    Returns ``nodes`` (``parent``: index or -1 for a task's root; ``task``: index into ``tasks``;
    ``context``: prompt + response ids through the node's step, its tool result included), the
    finished ``trajectories`` and, for each, the ``owner`` node it ended at (a terminal step, or the
    leaf it completed).
    """
    counter = itertools.count()
    env = worker.env
    nodes: list[dict[str, Any]] = []
    done: list[tuple[int, LiveEpisode]] = []
    frontier: list[tuple[int, LiveEpisode]] = []
    for i, t in enumerate(tasks):
        ep = open_episode(env, worker.encoders, Task.from_dict(t), next(counter))
        nodes.append({"parent": -1, "task": i, "context": list(ep.traj.prompt_ids)})
        frontier.append((len(nodes) - 1, ep))
    for d in range(depth):
        children = [
            (nid, fork_episode(ep, env, ep.traj.num_steps, next(counter)))
            for nid, ep in frontier
            for _ in range(width)
        ]
        for _, ep in frontier:  # a node's own session is not needed once its children are forked
            env.close_session(ep.session_id)
        ended = _advance_all(worker, [ep for _, ep in children], temperature, turn_seed(seed, d))
        frontier = []
        for parent, ep in children:
            nodes.append(
                {
                    "parent": parent,
                    "task": nodes[parent]["task"],
                    "context": ep.traj.prompt_ids + ep.traj.response_ids,
                }
            )
            (done if id(ep) in ended else frontier).append((len(nodes) - 1, ep))
    owner: dict[int, int] = {}
    live: list[LiveEpisode] = []
    for nid, ep in frontier:  # complete every open leaf: the leaf itself, and forks for more rollouts
        runs = [ep] + [
            fork_episode(ep, env, ep.traj.num_steps, next(counter)) for _ in range(completions - 1)
        ]
        for r in runs:
            owner[id(r)] = nid
        live.extend(runs)
    turn = depth
    while live:
        live, finished, _ = advance_episodes(
            worker.engine,
            env,
            worker.encoders,
            worker.parse,
            live,
            worker.budget,
            temperature,
            turn_seed(seed, turn),
        )
        done.extend((owner[id(ep)], ep) for ep in finished)
        turn += 1
    trajs = [close_episode(env, ep) for _, ep in done]
    return {"nodes": nodes, "trajectories": trajs, "owner": [nid for nid, _ in done]}


def tree_sibling_pairs(
    nodes: list[dict[str, Any]], owner: list[int], values: list[float], potential: str
) -> list[Any]:
    """Sibling pairs (``steprl.prm.SiblingPair``) of an explored tree whose potentials differ.

    ``values[i]`` is the outcome of the rollout that ended at node ``owner[i]``; the prefix of a pair is
    the parent's context, each continuation a child's step (action and tool result).
    """
    from steprl.prm import SiblingPair

    outcomes: list[list[float]] = [[] for _ in nodes]
    for o, v in zip(owner, values, strict=True):
        outcomes[o].append(v)
    parents = [nd["parent"] for nd in nodes]
    pot = node_potentials(parents, outcomes, potential)
    pairs = []
    for good, bad in sibling_label_pairs(parents, pot):
        prefix = nodes[parents[good]]["context"]
        for child in (good, bad):
            if nodes[child]["context"][: len(prefix)] != prefix:
                raise ValueError(f"node {child} does not extend its parent's context (a fork re-tokenized?)")
        pairs.append(
            SiblingPair(
                prefix, nodes[good]["context"][len(prefix) :], nodes[bad]["context"][len(prefix) :],
                float(pot[good]), float(pot[bad]),  # type: ignore[arg-type]
            )
        )  # fmt: skip
    return pairs


def _prm(worker: Any, path: str) -> Any:
    """The PRM at ``path``, loaded once per worker process."""
    from steprl.prm import ProcessRewardModel

    cache = worker.__dict__.setdefault("_codetool_prms", {})
    if path not in cache:
        cache[path] = ProcessRewardModel(path, device="cpu")
    return cache[path]


def search_rollout(
    worker: Any,
    tasks: list[dict[str, Any]],
    n: int,
    max_depth: int,
    prm_path: str,
    temperature: float,
    seed: int,
) -> tuple[list[Trajectory], dict[str, float]]:
    """CodeTool inference inside a RolloutWorker: at every step sample n candidates (the episode
    itself and n - 1 forks), execute them, and keep the one with the largest on-the-spot + latent
    reward (PRM P(yes) of the context through the candidate step and its result)."""
    env, prm = worker.env, _prm(worker, prm_path)
    counter = itertools.count()
    live = [open_episode(env, worker.encoders, Task.from_dict(t), next(counter)) for t in tasks]
    finished: list[LiveEpisode] = []
    stats = {"candidates": 0.0, "switched": 0.0}
    for d in range(max_depth):
        if not live:
            break
        groups = [
            [ep] + [fork_episode(ep, env, ep.traj.num_steps, next(counter)) for _ in range(n - 1)]
            for ep in live
        ]
        flat = [c for g in groups for c in g]
        ended = _advance_all(worker, flat, temperature, turn_seed(seed, d))
        latent = prm.score([c.traj.prompt_ids + c.traj.response_ids for c in flat])
        live, k = [], 0
        for g in groups:
            spot = [on_the_spot_reward(c.traj.steps[-1]) for c in g]
            best = select_best(spot, latent[k : k + len(g)])
            chosen = g[best]
            chosen.traj.meta.setdefault("codetool_search", []).append(
                {"on_the_spot": spot, "latent": latent[k : k + len(g)], "chosen": best}
            )
            for j, c in enumerate(g):
                if j != best:
                    env.close_session(c.session_id)
            (finished if id(chosen) in ended else live).append(chosen)
            stats["candidates"] += len(g)
            stats["switched"] += float(best != 0)
            k += len(g)
    for ep in live:  # the search's depth ran out before an answer: a truncated episode
        ep.traj.end_reason, ep.traj.truncated, ep.traj.done = "max_turns", True, False
    eps = sorted(finished + live, key=lambda ep: ep.index)
    return [close_episode(env, ep) for ep in eps], stats


@register_method("codetool")
class CodeTool(Method):
    def check(self, cfg: StepRLConfig) -> str | None:
        ct = cfg.codetool
        if cfg.rollout.temperature <= 0 and (ct.tree_width > 1 or ct.search_candidates > 1):
            return "CodeTool samples sibling candidates: rollout.temperature must be > 0"
        if ct.outcome == "return" and ct.potential != "soft":
            return "codetool.outcome=return is a graded outcome: use codetool.potential=soft"
        return None

    # ---- PRM data and training -----------------------------------------------------------------
    def prm_examples(
        self, ctx: MethodContext, seed: int
    ) -> tuple[list[tuple[list[int], bool]], dict[str, float]]:
        """Sibling-pair PRM examples from exploration trees on training tasks (ties give none)."""
        from steprl.prm import examples_from_sibling_pairs

        c, ct = ctx.cfg, ctx.cfg.codetool
        tasks = ctx.suite.tasks("train", ct.tree_tasks, c.data.seed + 7)
        chunks, results = ctx.fan_out(
            explore_trees, [t.to_dict() for t in tasks], ct.tree_depth, ct.tree_width, ct.completions,
            c.rollout.temperature, seed=seed,
        )  # fmt: skip
        pairs, num_nodes, solved, rollouts = [], 0, 0.0, 0
        for chunk, res in zip(chunks, results, strict=True):
            nodes, trajs = res["nodes"], res["trajectories"]
            scored = ctx.score(trajs, [tasks[chunk[nodes[o]["task"]]] for o in res["owner"]])
            values = [rollout_outcome(t.is_solved, t.step_rewards, ct.outcome) for t in scored]
            pairs += tree_sibling_pairs(nodes, res["owner"], values, ct.potential)
            num_nodes += len(nodes)
            solved += sum(t.is_solved for t in scored)
            rollouts += len(scored)
        examples = examples_from_sibling_pairs(pairs)
        return examples, {
            "codetool/tree_nodes": float(num_nodes),
            "codetool/tree_rollouts": float(rollouts),
            "codetool/tree_success": solved / max(rollouts, 1),
            "codetool/sibling_pairs": float(len(pairs)),
            "codetool/prm_examples": float(len(examples)),
        }

    def train_prm(self, ctx: MethodContext, examples: list[tuple[list[int], bool]]) -> str:
        from steprl.prm import train_prm

        ct = ctx.cfg.codetool
        if not examples:
            raise RuntimeError(
                "CodeTool: no sibling steps with different potentials in the exploration trees (every "
                "rollout below them scored the same); raise codetool.tree_tasks / tree_width / completions, "
                "use codetool.potential=soft, or start from a stronger policy"
            )
        return train_prm(
            ctx.policy_path, examples, str(ctx.run_dir / "prm"), ct.prm_epochs, ct.prm_lr, ct.prm_batch_size,
            seed=ctx.cfg.trainer.seed,
        )  # fmt: skip

    def setup(self, ctx: MethodContext) -> None:
        ct = ctx.cfg.codetool
        t0 = time.time()
        stats: dict[str, float] = {}
        if ct.prm_path:
            self.prm_path = ct.prm_path
        else:
            examples, stats = self.prm_examples(ctx, seed=ctx.cfg.trainer.seed * 7919 + 1)
            ctx.progress.stage(
                f"CodeTool: {int(stats['codetool/sibling_pairs'])} sibling pairs from "
                f"{int(stats['codetool/tree_nodes'])} tree nodes; training the PRM"
            )
            self.prm_path = self.train_prm(ctx, examples)
        stats["codetool/prm_setup_seconds"] = time.time() - t0
        # the reward path: SuccCalling (code ran) is on-the-spot, Contribution comes from the PRM
        ctx.set_reward_config(replace(ctx.cfg.reward, contribution_source="prm", prm_path=self.prm_path))
        if ct.eval_search:
            stats.update(self.search_eval(ctx, "start"))
        ctx.logger.log(0, stats)

    # ---- training and inference ----------------------------------------------------------------
    def iteration(self, ctx: MethodContext, it: int) -> dict[str, float]:
        metrics = super().iteration(ctx, it)  # the shared step: SuccCalling + PRM Contribution, step GAE
        if ctx.cfg.codetool.eval_search and it == ctx.cfg.trainer.total_iterations:
            metrics.update(self.search_eval(ctx, "final"))
        return metrics

    def search(
        self, ctx: MethodContext, tasks: list[Task], seed: int
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """Best-of-n step search (on-the-spot + latent) on ``tasks``, scored by the reward workers."""
        c, ct = ctx.cfg, ctx.cfg.codetool
        chunks, results = ctx.fan_out(
            search_rollout, [t.to_dict() for t in tasks], ct.search_candidates, ct.search_depth,
            self.prm_path, c.rollout.temperature, seed=seed,
        )  # fmt: skip
        by_id = merge_by_id(chunks, [part for part, _ in results])
        stats = {k: sum(st[k] for _, st in results) for k in ("candidates", "switched")}
        trajs = [by_id[i] for i in range(len(tasks))]
        return ctx.score(trajs, tasks), stats

    def search_eval(self, ctx: MethodContext, tag: str) -> dict[str, float]:
        trajs, st = self.search(ctx, ctx.test_tasks, seed=ctx.cfg.trainer.seed + 17)
        out = episode_metrics(trajs, prefix=f"eval/search_{tag}/")
        out[f"eval/search_{tag}/switched_share"] = (
            st["switched"] / max(st["candidates"], 1.0) * ctx.cfg.codetool.search_candidates
        )
        return out
