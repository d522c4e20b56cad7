"""Faults that must not cost an iteration its batch: workers killed mid-iteration, the tool server
killed, tool calls that fail, and episodes cut by the token budget.

The slow tests run a real Controller on a local Ray cluster (transformers engine, two rollout workers and
a reward worker, a FastAPI tool server in its own process) and SIGKILL a worker's or the server's
process right after a chunk of work was submitted to it. Chunks are seeded by their index, so the
batch produced with a failure must equal, token for token, the batch produced without one.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from steprl.algorithms.advantages import AdvantageConfig, compute_advantages
from steprl.config import StepRLConfig
from steprl.engines.base import Generation, RolloutEngine
from steprl.engines.hf_engine import HFEngine
from steprl.episode import EpisodeBudget, run_episodes
from steprl.evaluation.metrics import episode_metrics
from steprl.fault import WorkerFailure, merge_by_id, split
from steprl.protocol import collate
from steprl.validation import validate
from tools_env.client import ToolClient
from tools_env.env import ToolEnv
from tools_env.parsers import get_parser
from tools_env.server import serve

# ---- fast: no Ray ------------------------------------------------------------------------------


def test_merge_by_id_keeps_every_item_exactly_once():
    ids = [(t, s) for t in range(3) for s in range(2)]
    chunks = split(ids, 4)
    assert chunks == [[(0, 0), (2, 0)], [(0, 1), (2, 1)], [(1, 0)], [(1, 1)]]
    merged = merge_by_id(chunks, [[f"{t}.{s}" for t, s in c] for c in chunks])
    assert [merged[k] for k in ids] == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    with pytest.raises(RuntimeError, match="returned twice"):
        merge_by_id([[(0, 0)], [(0, 0)]], [["a"], ["b"]])
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        merge_by_id([[(0, 0), (0, 1)]], [["a"]])
    assert split([1, 2], 3) == [[1], [2]]  # no empty chunk for an idle worker


class ScriptedEngine(RolloutEngine):
    """Plays fixed assistant turns (same for every episode), like a policy that always says this."""

    def __init__(self, encoder, turns: list[str]) -> None:
        self.turns = [encoder.action_ids(t) for t in turns]
        self.stop, self.calls = encoder.eot_id, 0

    def generate(self, prompts, max_tokens, temperature, seed=None, **_):
        ids = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        return [Generation(ids[:m], [-1.0] * len(ids[:m]), ids[:m][-1:] == [self.stop]) for m in max_tokens]

    def load_weights(self, weights_dir: str) -> None:
        raise RuntimeError("a scripted engine has no weights")


def test_a_failing_tool_call_is_an_observation_through_the_tool_server(encoder, atlas):
    """The tool raises inside the server (unknown country): the episode sees an error message and
    goes on to answer; nothing crashes, the step is marked unsuccessful."""
    tasks = atlas.tasks("test", 2, 0)
    engine = ScriptedEngine(
        encoder,
        [
            '<tool_call>\n{"name": "lookup", "arguments": {"country": "Nowhereland", "field": "area"}}\n</tool_call>',
            '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1/0"}}\n</tool_call>',
            "The answer is 3.",
        ],
    )
    with serve(background="thread") as server, ToolClient(server.client_url) as client:
        trajs = run_episodes(
            engine,
            client,
            {"atlas": encoder},
            get_parser("hermes"),
            tasks,
            EpisodeBudget(max_turns=6, max_response_tokens=600, max_tokens_per_turn=80),
        )
    for traj in trajs:
        assert traj.end_reason == "answer" and traj.done and traj.num_steps == 3
        lookup, calc, _answer = traj.steps
        assert lookup.succ_calling == 0.0 and "no country named 'Nowhereland'" in lookup.observation
        assert lookup.info["calls"][0]["error"] == "ToolError"
        assert calc.succ_calling == 0.0 and calc.observation.startswith("Error")
        traj.validate()


def test_an_episode_cut_by_the_token_budget_is_kept_truncated_and_bootstrapped(
    tiny_model_path, tokenizer, encoder, atlas
):
    """Real transformers engine, greedy, 6 tokens per turn: every episode ends ``max_tokens``; it is
    in the batch (not dropped), marked truncated, counted, and GAE bootstraps from V(s_k) of the cut
    step (its last token is an action token, where the critic is never trained: docs/algorithms.md,
    Truncation)."""
    engine = HFEngine(tiny_model_path, [encoder.eot_id], tokenizer.pad_token_id)
    tasks = atlas.tasks("test", 3, 0)
    trajs = run_episodes(
        engine,
        ToolEnv(),
        {"atlas": encoder},
        get_parser("hermes"),
        tasks,
        EpisodeBudget(max_turns=6, max_response_tokens=6, max_tokens_per_turn=6),
        temperature=0.0,
    )
    assert len(trajs) == 3
    for traj in trajs:
        assert traj.end_reason == "max_tokens" and traj.truncated and not traj.done
        traj.steps[-1].reward = 0.3
    m = episode_metrics(trajs, "train/")
    assert m["train/truncated"] == 1.0 and m["train/truncated_count"] == 3.0 and m["train/episodes"] == 3.0

    batch = collate(trajs, tokenizer.pad_token_id)
    assert batch.truncated.all() and not batch.done.any()
    T = batch.input_ids.shape[1]
    values = torch.arange(batch.size * T, dtype=torch.float32).view(batch.size, T) / 100.0
    cfg = AdvantageConfig(estimator="step_gae", gamma=0.9, lam=0.7)
    adv = compute_advantages(batch, values, cfg).advantages
    for b, traj in enumerate(trajs):  # one step, cut mid-action: A_0 = r_0 + gamma * V(s_0) - V(s_0)
        p = len(traj.prompt_ids)
        last = p + len(traj.response_ids) - 1
        assert traj.action_mask[-1]  # the cut fell inside the action
        golden = 0.3 + 0.9 * values[b, p - 1] - values[b, p - 1]
        assert adv[b, p : last + 1].tolist() == pytest.approx([float(golden)] * (last + 1 - p))
    batch.truncated[:] = False  # the same episodes as terminal would not bootstrap
    adv_done = compute_advantages(batch, values, cfg).advantages
    p = len(trajs[0].prompt_ids)
    assert float(adv_done[0, p]) == pytest.approx(0.3 - float(values[0, p - 1]))


# ---- slow: a real controller on a local Ray cluster --------------------------------------------

OVERRIDES = {
    "rollout": {"engine": "hf", "num_workers": 2, "tool_server": "local", "max_tokens_per_turn": 24},
    "reward": {"num_workers": 1},
    "algorithm": {"kl_coef": 0.0, "use_critic": False},
    "trainer": {"max_worker_restarts": 2, "logger": ["jsonl"], "progress": False},
}


@pytest.fixture(scope="module")
def controller(ray_cluster, tiny_model_path, tmp_path_factory):
    from steprl.controller import Controller

    cfg = validate(OmegaConf.merge(OmegaConf.structured(StepRLConfig), OVERRIDES))
    ctl = Controller(cfg, tiny_model_path, tmp_path_factory.mktemp("run"))
    ctl.start_rest(tiny_model_path)
    yield ctl
    ctl.shutdown()


def _batch(ctl, seed: int = 11):
    tasks = ctl.suite.tasks("train", 4, 0)
    trajs, _ = ctl.generate(tasks, 2, 1.0, seed)
    return trajs


def _same_batch(trajs, baseline) -> None:
    assert [t.meta["episode_id"] for t in trajs] == [[ti, si] for ti in range(4) for si in range(2)]
    for t, b in zip(trajs, baseline, strict=True):
        assert (t.task_id, t.response_ids, t.step_rewards) == (b.task_id, b.response_ids, b.step_rewards)


def _kill_on_submit(pool, slot: int, pid_of, times: int = 1) -> list[int]:
    """SIGKILL the process of ``pool.workers[slot]`` right after a chunk was submitted to it.

    Pids are looked up before any work is submitted (a busy actor answers only after its chunk), for
    the current workers and for every replacement the pool creates.
    """
    pids = {w: pid_of(w) for w in pool.workers}
    create = pool.create

    def tracked_create(s: int):
        worker = create(s)
        pids[worker] = pid_of(worker)
        return worker

    killed: list[int] = []

    def hook(_chunk: int, s: int) -> None:
        if s == slot and len(killed) < times:
            os.kill(pids[pool.workers[s]], signal.SIGKILL)
            killed.append(pids[pool.workers[s]])

    pool.create, pool.on_submit = tracked_create, hook
    return killed


@pytest.mark.slow
def test_killed_workers_and_tool_server_are_replaced_and_the_batch_is_whole(controller):
    import ray

    ctl = controller
    baseline = _batch(ctl)
    assert len(baseline) == 8 and episode_metrics(baseline, "t/")["t/episodes"] == 8

    # a rollout worker dies with its chunk in flight: re-created, chunk re-run, same episodes
    old = ctl.rollout_workers[0]
    killed = _kill_on_submit(ctl.rollout_pool, 0, lambda w: ray.get(w.pid.remote()))
    _same_batch(_batch(ctl), baseline)
    assert len(killed) == 1 and ctl.rollout_pool.restarts == [1, 0] and ctl.rollout_workers[0] is not old
    assert ray.get(ctl.rollout_workers[0].pid.remote()) != killed[0]

    # a reward worker dies while scoring
    killed = _kill_on_submit(
        ctl.reward_pool, 0, lambda w: ray.get(w.__ray_call__.remote(lambda self: os.getpid()))
    )
    _same_batch(_batch(ctl), baseline)
    assert len(killed) == 1 and ctl.reward_pool.restarts == [1]

    # the tool server dies: restarted on the same port, the affected chunks re-run, no worker charged
    server = ctl.tool_server
    url, server_pid = server.url, server.pid()
    killed = _kill_on_submit(ctl.rollout_pool, 0, lambda _w: server_pid)
    _same_batch(_batch(ctl), baseline)
    assert len(killed) == 1 and server.epoch == 1 and server.url == url and server.pid() != killed[0]
    assert ctl.rollout_pool.restarts == [1, 0]
    assert ctl.fault_metrics() == {
        "fault/rollout_restarts": 1.0,
        "fault/reward_restarts": 1.0,
        "fault/tool_server_restarts": 1.0,
    }

    # a worker that keeps dying stops the run once its restarts (2) are spent, with a clear error
    _kill_on_submit(ctl.rollout_pool, 0, lambda w: ray.get(w.pid.remote()), times=10)
    with pytest.raises(
        WorkerFailure, match=r"rollout worker 0 failed 3 times \(trainer.max_worker_restarts=2\)"
    ):
        _batch(ctl)


@pytest.mark.slow
def test_placement_group_bundles_and_shared_bundles(ray_cluster):
    """colocate: one PACK placement group, a bundle per worker; a worker without resources shares the
    bundles of the role it is told to; a run that does not fit fails at once, naming what it asked."""
    import ray

    from workers.group import Placement

    with pytest.raises(ValueError, match="placement must be one of"):
        Placement("everywhere", {})
    bundles = {"rollout": [{"CPU": 1.0}, {"CPU": 1.0}], "actor": [{"CPU": 0.5, "GPU": 0.0}]}
    bundles["reward"] = [{"CPU": 0.0}] * 3
    placement = Placement("colocate", bundles, share={"reward": "rollout"})
    try:
        assert placement.index == {
            ("rollout", 0): 0, ("rollout", 1): 1, ("actor", 0): 2,
            ("reward", 0): 0, ("reward", 1): 1, ("reward", 2): 0,
        }  # fmt: skip
        assert ray.util.placement_group_table(placement.pg)["strategy"] == "PACK"
        assert placement.options("critic", 0) == {}  # no bundle: Ray's default scheduling

        @ray.remote(num_cpus=0)
        def where() -> int:
            return ray.get_runtime_context().get_placement_group_id() is not None

        assert ray.get(where.options(**placement.options("reward", 2)).remote())
    finally:
        placement.remove()
    with pytest.raises(RuntimeError, match="could not reserve 1 bundles"):
        Placement("spread", {"actor": [{"CPU": 64.0}]}, timeout_s=1.0)


@pytest.mark.slow
def test_pool_counts_a_replacement_that_fails_to_start_and_keeps_chunk_order(ray_cluster):
    import ray

    from steprl.fault import WorkerPool

    @ray.remote(num_cpus=0)
    class Doubler:
        def double(self, xs: list[int]) -> list[int]:
            return [2 * x for x in xs]

        def pid(self) -> int:
            return os.getpid()

    starts: list[int] = []

    def prepare(worker) -> None:  # the first replacement "fails to start", the second works
        starts.append(ray.get(worker.pid.remote()))
        if len(starts) == 1:
            raise RuntimeError("engine did not start")

    pool = WorkerPool("doubler", lambda _slot: Doubler.remote(), 2, max_restarts=3, prepare=prepare)
    os.kill(ray.get(pool.workers[1].pid.remote()), signal.SIGKILL)
    chunks = split(list(range(7)), 2)
    parts = pool.run(chunks, lambda w, _i, chunk: w.double.remote(chunk))
    assert merge_by_id(chunks, parts) == {x: 2 * x for x in range(7)}
    assert pool.restarts == [0, 2] and len(starts) == 2  # one death + one failed start, both charged
    assert [e["error"] for e in pool.events if e["slot"] == 1][-1] == "RuntimeError: engine did not start"
    pool.restart(1, RuntimeError("again"))  # the third and last restart allowed
    assert pool.restarts == [0, 3] and len(starts) == 3
    with pytest.raises(
        WorkerFailure, match=r"doubler worker 1 failed 4 times .* last error: RuntimeError: x"
    ):
        pool.restart(1, RuntimeError("x"))


# ---- the methods' own fan-out (trees, policy samples, exploration) goes through the same path ----

METHODS = {
    **OVERRIDES,
    "rollout": {**OVERRIDES["rollout"], "group_size": 2, "max_turns": 3},
    "trainer": {**OVERRIDES["trainer"], "tasks_per_iteration": 2},
    "algorithm": {**OVERRIDES["algorithm"], "estimator": "grpo", "outcome": "sum"},
    "arpo": {"initial_rollouts": 1, "alpha": 1.0, "beta": 0.0, "beam_size": 2},
    "codetool": {"tree_tasks": 2, "tree_depth": 1, "tree_width": 2, "completions": 1},
}


@pytest.fixture(scope="module")
def method_controller(ray_cluster, tiny_model_path, tmp_path_factory):
    from steprl.controller import Controller

    cfg = validate(OmegaConf.merge(OmegaConf.structured(StepRLConfig), METHODS))
    ctl = Controller(cfg, tiny_model_path, tmp_path_factory.mktemp("methods"))
    ctl.start_rest(tiny_model_path)
    yield ctl
    ctl.shutdown()


def _rollout_pid(worker) -> int:
    import ray

    return ray.get(worker.pid.remote())


def _killed_once(ctl, slot: int, run):
    """``run()`` once undisturbed and once with rollout worker ``slot`` SIGKILLed right after its first
    chunk was submitted; returns both results (the caller checks they are the same)."""
    baseline = run()
    before = list(ctl.rollout_pool.restarts)
    killed = _kill_on_submit(ctl.rollout_pool, slot, _rollout_pid)
    try:
        again = run()
    finally:
        ctl.rollout_pool.on_submit = None
    assert len(killed) == 1
    assert ctl.rollout_pool.restarts[slot] == before[slot] + 1  # re-created, the chunk re-run
    return baseline, again


@pytest.mark.slow
def test_arpo_trees_survive_a_killed_rollout_worker(method_controller):
    from steprl.methods import get_method

    ctl, arpo = method_controller, get_method("arpo")

    def collect():
        ctl.cursor = 0  # the same two tasks every time
        return arpo.collect(ctl, 1)

    baseline, again = _killed_once(ctl, 1, collect)
    m = ctl.cfg.rollout.group_size
    for r in (baseline, again):  # every tree holds exactly M trajectories: nothing lost or duplicated
        ids = [t.task_id for t in r.trajectories]
        assert len(ids) == 2 * m and all(ids.count(i) == m for i in set(ids))
        assert r.generated_tokens > 0 and r.seconds > 0
    key = [(t.task_id, t.response_ids, t.step_rewards, t.meta["arpo_cuts"]) for t in baseline.trajectories]
    assert [
        (t.task_id, t.response_ids, t.step_rewards, t.meta["arpo_cuts"]) for t in again.trajectories
    ] == key
    assert baseline.metrics == again.metrics


@pytest.mark.slow
def test_archer_policy_samples_survive_a_killed_rollout_worker(method_controller):
    from steprl.methods import get_method

    ctl, archer = method_controller, get_method("archer")
    states = [t.prompt_ids for t in _batch(ctl, seed=5)[:5]]
    baseline, again = _killed_once(ctl, 0, lambda: archer.policy_actions(ctl, states, seed=9))
    assert len(baseline) == len(states) and all(baseline)  # one sampled turn per state, in order
    assert again == baseline


@pytest.mark.slow
def test_codetool_exploration_trees_survive_a_killed_rollout_worker(method_controller):
    from steprl.methods import get_method

    ctl, codetool = method_controller, get_method("codetool")
    baseline, again = _killed_once(ctl, 1, lambda: codetool.prm_examples(ctl, seed=4))
    (examples, stats), (examples2, stats2) = baseline, again
    # 2 tasks, depth 1, width 2: each tree has its root and 2 children, every child completed once
    assert stats["codetool/tree_nodes"] == 6.0 and stats["codetool/tree_rollouts"] == 4.0
    assert (examples2, stats2) == (examples, stats)


@pytest.mark.slow
def test_set_reward_config_replaces_the_workers_in_their_bundles_and_restarts_keep_it(method_controller):
    from dataclasses import replace

    import ray

    ctl = method_controller
    old = list(ctl.reward_workers)
    restarts = list(ctl.reward_pool.restarts)
    ctl.set_reward_config(replace(ctl.cfg.reward, alpha=3.0))
    assert all(w not in old for w in ctl.reward_workers) and ctl.reward_pool.restarts == restarts

    def alphas() -> list[float]:
        return ray.get(
            [w.__ray_call__.remote(lambda self: self.pipeline.cfg.alpha) for w in ctl.reward_workers]
        )

    assert alphas() == [3.0]
    killed = _kill_on_submit(
        ctl.reward_pool, 0, lambda w: ray.get(w.__ray_call__.remote(lambda self: os.getpid()))
    )
    try:
        trajs = _batch(ctl)
    finally:
        ctl.reward_pool.on_submit = None
    assert len(killed) == 1 and len(trajs) == 8 and alphas() == [3.0]  # the replacement has the new config
