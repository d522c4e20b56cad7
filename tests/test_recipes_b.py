"""Smoke runs of the arpo, archer and codetool recipes on the embedded model and tasks (transformers
engine, one actor rank, tiny sizes) on one shared local Ray cluster, calling ``steprl.main.train``
in-process as ``main`` does after its checks. archer starts from arpo's final checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from steprl.main import load_config, resolve_model, train

pytestmark = pytest.mark.slow

TINY = [
    "rollout.engine=hf",
    "actor.world_size=1",
    "data.train_tasks=32",
    "data.test_tasks=4",
    "rollout.eval_samples=1",
    "rollout.eval_temperature=0.0",  # one greedy pass per evaluation
    "trainer.tasks_per_iteration=2",
    "critic.world_size=1",
    "rollout.max_turns=4",
    "trainer.logger=[jsonl]",
]


def _run(args: list[str], run_dir: Path) -> dict:
    """``steprl.main.main`` without its own ``ray.init``/``ray.shutdown`` (the module shares one cluster)."""
    cfg, config_yaml = load_config([*args, f"trainer.run_dir={run_dir}"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    return train(cfg, config_yaml, resolve_model(cfg.model.path), run_dir)


def _iterations(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "time/iteration" in r}


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_model_path, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes_b")


def test_arpo_branches_and_fills_the_group_budget(runs):
    run_dir = runs / "arpo"
    summary = _run(
        [
            "recipe=arpo", *TINY, "trainer.total_iterations=2", "sft.num_demos=48", "sft.batch_size=8", "rollout.group_size=4",
            "arpo.initial_rollouts=2", "arpo.alpha=1.0", "arpo.beta=0.0", "arpo.attribution=hard",
        ],
        run_dir,
    )  # fmt: skip
    assert summary["status"] == "completed"
    for it, row in _iterations(run_dir).items():
        # every group holds exactly M = 4 trajectories: N = 2 from the prompt, the rest branches or fills
        assert row["arpo/branches_per_task"] + row["arpo/fills_per_task"] == 2.0, it
        if row["arpo/branches_per_task"] > 0:
            assert row["arpo/branch_prob"] == 1.0  # alpha = 1, beta = 0: every branch point branches
        assert -1.0 <= row["arpo/reward"] <= 1.1 and 0.0 <= row["arpo/format_ok"] <= 1.0
        assert math.isfinite(row["actor/pg_loss"])
    # the (deterministic) smoke run reaches tool results, so the branching path itself ran
    assert sum(row["arpo/branches_per_task"] for row in _iterations(run_dir).values()) > 0
    assert (run_dir / "checkpoints" / "final" / "actor" / "model.safetensors").exists()


def test_archer_from_the_arpo_checkpoint(runs):
    start = runs / "arpo" / "checkpoints" / "final" / "actor"
    if not start.exists():
        pytest.skip("needs the arpo run of this module")
    run_dir = runs / "archer"
    summary = _run(
        [
            "recipe=archer", *TINY, "trainer.total_iterations=2", f"model.path={start}", "sft.enabled=false", "rollout.group_size=2",
            "archer.batch_size=4", "archer.critic_updates=2", "archer.actor_warmup=1",
        ],
        run_dir,
    )  # fmt: skip
    assert summary["status"] == "completed" and summary["model"] == str(start)
    its = _iterations(run_dir)
    assert its[1]["archer/actor_updated"] == 0.0 and "actor/pg_loss" not in its[1]  # critic warm-up
    assert its[2]["archer/actor_updated"] == 1.0 and math.isfinite(its[2]["actor/pg_loss"])
    for row in its.values():
        for key in ("archer/q_loss", "archer/v_loss", "archer/q_target_mean", "archer/v_target_mean"):
            assert math.isfinite(row[key]), key
    assert its[2]["archer/buffer_trajectories"] == 8.0  # 2 iterations x 2 tasks x 2 samples
    critic = run_dir / "checkpoints" / "final" / "archer_critic"
    assert (critic / "model.safetensors").exists()
    # the saved critic is what archer.critic_path loads: the policy's backbone plus the three heads
    from safetensors.torch import load_file
    from transformers import AutoModel

    from workers.archer import UtteranceCritic

    model = UtteranceCritic(AutoModel.from_pretrained(str(start)), 0)
    model.load_state_dict(load_file(str(critic / "model.safetensors")), strict=True)


def test_archer_critic_td_step_and_target_update_under_fsdp2(runs, tiny_model_path):
    """Two FSDP2 ranks, three rows (one rank gets a padding row): the first TD step's losses are known
    (heads start at 0), and with tau = 1 the target network equals the online one afterwards."""
    import torch

    from steprl.config import AlgorithmConfig, ModelConfig, OptimConfig, WorkerConfig
    from workers.archer import ArcherCriticWorker
    from workers.group import WorkerGroup

    group = WorkerGroup(
        ArcherCriticWorker, 2, 0.5, 0.0, "archer_test", model_path=tiny_model_path, model_cfg=ModelConfig(),
        worker_cfg=WorkerConfig(world_size=2), optim_cfg=OptimConfig(critic_lr=1e-2),
        algo_cfg=AlgorithmConfig(), seed=0, tau=1.0,
    )  # fmt: skip
    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(5, 200, (3, 12), generator=gen)
        data = {
            "input_ids": ids,
            "attention_mask": torch.ones(3, 12, dtype=torch.bool),
            "step_mask": torch.tensor([[True, True], [True, False], [True, True]]),
            "state_pos": torch.tensor([[2, 6], [3, 0], [1, 8]]),
            "action_pos": torch.tensor([[5, 11], [9, 0], [7, 10]]),
            "q_target": torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
            "v_target": torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-1.0, -1.0]]),
        }
        heads = group.gather_rows("compute_heads", data)
        assert heads.shape == (3, 12, 3) and torch.equal(heads, torch.zeros_like(heads))
        assert torch.equal(group.gather_rows("compute_target_heads", data), heads)
        m = group.mean_metrics("update_critic", data)
        # per real step: (0 - 1)^2 for each Q head and (0 + 1)^2 for V (means over each rank's steps)
        assert m["archer/q_loss"] == pytest.approx(2.0) and m["archer/v_loss"] == pytest.approx(1.0)
        online = group.gather_rows("compute_heads", data)
        target = group.gather_rows("compute_target_heads", data)
        assert not torch.equal(online, heads)
        assert torch.allclose(target, online, atol=1e-6)  # theta_target <- 0 * theta_target + 1 * theta
    finally:
        group.shutdown()


def test_codetool_with_its_prm_in_the_reward_path_and_search(runs, tokenizer, tiny_model_path):
    """The recipe with a given PRM (``codetool.prm_path``): Contribution comes from the PRM in every
    scored batch, and the best-of-n step search evaluates the policy before and after training. (Tree
    building and the PRM's sibling-pair labels are checked against a scripted engine in
    test_family_algorithms.py; the tiny policy of a smoke run solves nothing, so its trees tie.)"""
    from steprl.chat import ChatEncoder
    from steprl.prm import train_prm
    from tools_env import get_suite
    from tools_env.suites.atlas import call_text

    suite = get_suite("math")
    encoder = ChatEncoder(tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt)
    examples = []
    for task in suite.tasks("train", 4, 3):
        prompt = encoder.start(task.question)[1]
        good = call_text("python", {"code": f"print({task.answer})"})
        examples += [
            (prompt + encoder.action_ids(good), True),
            (prompt + encoder.action_ids("print(x"), False),
        ]
    prm = train_prm(tiny_model_path, examples, str(runs / "prm"), epochs=1, lr=1e-4, batch_size=4)

    run_dir = runs / "codetool"
    summary = _run(
        [
            "recipe=codetool", *TINY, "sft.num_demos=32", "sft.batch_size=16", "rollout.group_size=2",
            "trainer.total_iterations=1", "algorithm.kl_coef=0", f"codetool.prm_path={prm}", "codetool.search_candidates=2",
            "codetool.search_depth=3",
        ],
        run_dir,
    )  # fmt: skip
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if "eval/search_start/pass_rate" in r)
    assert start["step"] == 0 and 0.0 <= start["eval/search_start/pass_rate"] <= 1.0
    its = _iterations(run_dir)
    for row in its.values():
        assert row["reward/prm/steps"] > 0  # every batch's Contribution came from the PRM
        assert math.isfinite(row["critic/vf_loss"]) and math.isfinite(row["actor/pg_loss"])
    assert 0.0 <= its[1]["eval/search_final/pass_rate"] <= 1.0  # after the last iteration
    assert 0.0 <= its[1]["eval/search_final/switched_share"] <= 1.0
