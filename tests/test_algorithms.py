"""Golden values and slow references for steprl.algorithms (rewards, placement, advantages).

Hand-computed values show their arithmetic in comments; random batches are checked against
plain-Python loops written here, independently of the vectorized code.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from steprl.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    RunningRewardNormalizer,
    aggregate,
    average_judge_samples,
    compute_advantages,
    contribution_from_annotation,
    get_advantage_estimator,
    is_solved_score,
    place_step_rewards,
    ppo_policy_loss,
    register_advantage,
    shape_step_rewards,
    step_first_positions,
    step_last_positions,
    steptool_compat_multipliers,
)
from steprl.protocol import StepRecord, Trajectory, collate

PAD_VALUE = 1e6  # values on padding: any leak into an advantage shows up as a huge number


# ----------------------------------------------------------------------------- builders


def make_traj(
    prompt_len: int,
    spans: list[tuple[int, int]],
    rewards: list[float],
    *,
    done: bool = True,
    truncated: bool = False,
    is_solved: float = 0.0,
    group_id: str = "",
    tail_obs: int = 0,
) -> Trajectory:
    """spans[k] = (action tokens, observation tokens after them) of step k."""
    t = Trajectory(task_id="t", prompt_ids=list(range(1, prompt_len + 1)))
    tok = 100
    for k, (n_act, n_obs) in enumerate(spans):
        t.append(list(range(tok, tok + n_act)), is_action=True, step=k, logprobs=[-0.5] * n_act)
        tok += n_act
        if n_obs:
            t.append(list(range(tok, tok + n_obs)), is_action=False, step=k)
            tok += n_obs
    if tail_obs:
        t.append(list(range(tok, tok + tail_obs)), is_action=False, step=max(len(spans) - 1, 0))
    t.steps = [StepRecord(text=f"step {k}", reward=r) for k, r in enumerate(rewards)]
    t.done, t.truncated = done, truncated
    t.end_reason = "answer" if done else ("max_turns" if truncated else "error")
    t.is_solved, t.group_id = is_solved, group_id
    t.validate()
    return t


def random_traj(rng: random.Random, min_steps: int = 0) -> Trajectory:
    n_steps = rng.randint(min_steps, 4)
    spans = [(rng.randint(1, 4), rng.randint(0, 3)) for _ in range(n_steps)]
    rewards = [rng.choice([0.0, 0.5, 1.0, rng.uniform(-1, 1)]) for _ in range(n_steps)]
    end = rng.choice(["done", "truncated", "neither"])
    return make_traj(
        rng.randint(1, 4),
        spans,
        rewards,
        done=end == "done",
        truncated=end == "truncated",
        is_solved=rng.choice([0.0, 0.5, 1.0]),
        group_id=rng.choice("ab"),
    )


def random_batch(seed: int, n: int = 6, min_steps: int = 0):
    rng = random.Random(seed)
    trajs = [random_traj(rng, min_steps) for _ in range(n)]
    batch = collate(trajs, pad_id=0)
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch.input_ids.shape, generator=gen)
    values[~batch.attention_mask] = PAD_VALUE
    return trajs, batch, values


# ----------------------------------------------------------------------------- slow references


def _layout(t: Trajectory):
    """Absolute positions of action tokens per step, from the trajectory's own lists."""
    p = len(t.prompt_ids)
    steps: dict[int, list[int]] = {}
    for i, (a, s) in enumerate(zip(t.action_mask, t.step_index, strict=True)):
        if a:
            steps.setdefault(s, []).append(p + i)
    return [steps[k] for k in range(t.num_steps)], p + len(t.response_ids) - 1


def _budget_cut(t: Trajectory) -> bool:
    """Truncated with the last response token an action token (cut inside its last step)."""
    return t.truncated and bool(t.action_mask) and t.action_mask[-1] == 1


def ref_bootstrap(t: Trajectory, v: list[float]) -> float:
    """0 if not truncated; V(s_k) of the cut step after a budget cut; else the last token's value."""
    steps, last = _layout(t)
    if not t.truncated:
        return 0.0
    return v[steps[-1][0] - 1] if _budget_cut(t) else v[last]


def ref_step_gae(t: Trajectory, v: list[float], gamma: float, lam: float) -> dict[int, float]:
    """Per-step loop: {token position: advantage}; also returns {state position: return}
    (no target at the state of a budget-cut step)."""
    steps, last = _layout(t)
    K = len(steps)
    V = [v[pos[0] - 1] for pos in steps]
    boot = ref_bootstrap(t, v)
    adv, g = [0.0] * K, 0.0
    for k in reversed(range(K)):
        nv = V[k + 1] if k + 1 < K else boot
        delta = t.steps[k].reward + gamma * nv - V[k]
        g = delta + gamma * lam * g
        adv[k] = g
    tok = {p: adv[k] for k, pos in enumerate(steps) for p in pos}
    ret = {steps[k][0] - 1: adv[k] + V[k] for k in range(K) if not (_budget_cut(t) and k == K - 1)}
    return tok, ret


def ref_token_gae(t: Trajectory, v: list[float], token_r: dict[int, float], gamma: float, lam: float):
    """Loop over the list of action positions only (observations never enter the recursion)."""
    steps, last = _layout(t)
    acts = sorted(p for pos in steps for p in pos)
    boot = ref_bootstrap(t, v)
    adv, g = {}, 0.0
    for i in reversed(range(len(acts))):
        nv = v[acts[i + 1] - 1] if i + 1 < len(acts) else boot
        delta = token_r.get(acts[i], 0.0) + gamma * nv - v[acts[i] - 1]
        g = delta + gamma * lam * g
        adv[acts[i]] = g
    return adv


def ref_last_token_rewards(t: Trajectory) -> dict[int, float]:
    steps, _ = _layout(t)
    return {pos[-1]: t.steps[k].reward for k, pos in enumerate(steps)}


def row_dict(x: torch.Tensor, b: int) -> dict[int, float]:
    return {i: float(val) for i, val in enumerate(x[b]) if val != 0}


# Layout used by the hand examples ("G"):
#   pos 0,1: prompt | 2,3: action step 0 | 4: obs | 5,6: action step 1
# V(s_0) = values[1], V(s_1) = values[4], last_index = 6.
G_VALUES = torch.tensor([[0.0, 0.5, 9.0, 9.0, 0.3, 9.0, 0.4]])


def golden_batch(**kw):
    return collate([make_traj(2, [(2, 1), (2, 0)], [0.2, 1.0], **kw)], pad_id=0)


# ----------------------------------------------------------------------------- rewards


def test_shape_step_rewards_golden():
    # alpha=1: (1*1 + 0.6)/2 = 0.8 ; (1*0 + 0.2)/2 = 0.1 ; final Unsure = 0.5
    assert shape_step_rewards([1, 0], [0.6, 0.2], "Unsure") == pytest.approx([0.8, 0.1, 0.5])
    # alpha=3: (3*1 + 0.6)/4 = 0.9
    assert shape_step_rewards([1], [0.6], 1.0, alpha=3.0) == pytest.approx([0.9, 1.0])
    # no final answer -> no final step
    assert shape_step_rewards([1], [0.0], None) == pytest.approx([0.5])
    # ablation "without step-grained reward": intermediate rewards are 0, final kept
    assert shape_step_rewards([1, 1], [1.0, 1.0], "Solved", step_grained=False) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        shape_step_rewards([1], [1.5], 1.0)
    with pytest.raises(ValueError):
        shape_step_rewards([1, 0], [1.0], 1.0)


def test_reward_helpers():
    assert [is_solved_score(x) for x in ("Solved", "unsure", "UNSOLVED", 0.25)] == [1.0, 0.5, 0.0, 0.25]
    with pytest.raises(ValueError):
        is_solved_score("maybe")
    assert contribution_from_annotation(4) == pytest.approx(0.8)  # 4 / 5
    assert contribution_from_annotation(3, scale=10) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        contribution_from_annotation(6)
    # k=3 judge samples, one failed: (0.6 + 0.9) / 2 = 0.75
    assert average_judge_samples([0.6, None, 0.9]) == pytest.approx(0.75)
    # per-step samples: column means ((1+0+1)/3, (0.5+0.5+0.2)/3)
    assert average_judge_samples([[1, 0.5], [0, 0.5], [1, 0.2]]) == pytest.approx([2 / 3, 0.4])
    with pytest.raises(ValueError):
        average_judge_samples([None, None])


def test_running_reward_normalizer_matches_batch_statistics_and_restores():
    rng = random.Random(0)
    chunks = [[rng.gauss(3, 2) for _ in range(rng.randint(1, 7))] for _ in range(5)]
    norm = RunningRewardNormalizer()
    for c in chunks:
        norm.update(c)
    flat = [x for c in chunks for x in c]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / len(flat)
    assert norm.mean == pytest.approx(mean) and norm.var == pytest.approx(var)
    out = norm.normalize([mean + math.sqrt(var)])
    assert out == pytest.approx([1.0])
    restored = RunningRewardNormalizer()
    restored.load_state_dict(norm.state_dict())
    assert restored.normalize(torch.tensor([1.0, 2.0])).tolist() == pytest.approx(
        norm.normalize(torch.tensor([1.0, 2.0])).tolist()
    )
    scale_only = RunningRewardNormalizer(center=False)
    scale_only.update([1.0, 3.0])  # std = 1
    assert scale_only.normalize([2.0]) == pytest.approx([2.0])


# ----------------------------------------------------------------------------- placement


def test_step_positions_and_placement_golden():
    b = golden_batch()
    # step 0 covers positions 2,3 and step 1 covers 5,6 (position 4 is an observation)
    assert step_first_positions(b.step_index, 2).tolist() == [[2, 5]]
    assert step_last_positions(b.step_index, 2).tolist() == [[3, 6]]
    assert step_first_positions(b.step_index, 3).tolist() == [[2, 5, -1]]
    assert place_step_rewards(b).tolist() == [[0.0, 0.0, 0.0, pytest.approx(0.2), 0.0, 0.0, 1.0]]


def test_compat_multipliers_docs_example():
    # 3 turns with rewards [r0, r1, r2] -> last tokens get [2*r0, 1*r1, 0*r2]
    b = collate([make_traj(1, [(2, 1), (1, 2), (2, 0)], [0.3, 0.7, 1.0])], pad_id=0)
    assert steptool_compat_multipliers(b.step_mask).tolist() == [[2.0, 1.0, 0.0]]
    placed = place_step_rewards(b, b.step_rewards * steptool_compat_multipliers(b.step_mask))
    # layout: 0 prompt | 1,2 act0 | 3 obs | 4 act1 | 5,6 obs | 7,8 act2
    assert row_dict(placed, 0) == pytest.approx({2: 0.6, 4: 0.7})


def test_reward_never_lands_on_a_masked_token():
    """Pitfall (a): on random trajectories, rewards sit exactly on each step's last action token."""
    for seed in range(30):
        trajs, b, _ = random_batch(seed)
        placed = place_step_rewards(b)
        assert not bool((placed != 0)[~b.action_mask].any())
        for i, t in enumerate(trajs):
            expected = {p: r for p, r in ref_last_token_rewards(t).items() if r != 0}
            assert row_dict(placed, i) == pytest.approx(expected)


def test_step_without_action_token_raises():
    t = make_traj(1, [(2, 1)], [1.0])
    t.steps.append(StepRecord(text="ghost", reward=0.5))  # step 1 has no token
    with pytest.raises(ValueError, match="step 1 has step_mask=True but no action token"):
        place_step_rewards(collate([t], pad_id=0))
    t2 = make_traj(1, [(2, 1), (1, 0)], [1.0, 0.5])
    t2.steps.pop()  # tokens of step 1 without a StepRecord
    with pytest.raises(ValueError):
        place_step_rewards(collate([t2], pad_id=0))


def test_step_boundaries_come_from_step_index_not_rewards():
    """Pitfall (d): a step whose reward is exactly 0 keeps its own boundaries and its own V(s_k)."""
    # 0 prompt | 1,2 act0 | 3 obs | 4,5 act1 (reward 0) | 6 obs | 7 act2
    t = make_traj(1, [(2, 1), (2, 1), (1, 0)], [0.5, 0.0, 1.0])
    b = collate([t], pad_id=0)
    assert step_first_positions(b.step_index, 3).tolist() == [[1, 4, 7]]
    assert row_dict(place_step_rewards(b), 0) == pytest.approx({2: 0.5, 7: 1.0})
    v = torch.tensor([[0.1, 9, 9, 0.2, 9, 9, 0.3, 9]])
    out = compute_advantages(b, v, AdvantageConfig(gamma=1.0, lam=1.0))
    # gamma=lam=1: A_k = (sum of rewards from k) - V(s_k)
    # A_0 = 1.5 - 0.1 = 1.4 ; A_1 = 1.0 - 0.2 = 0.8 ; A_2 = 1.0 - 0.3 = 0.7
    assert out.advantages[0].tolist() == pytest.approx([0, 1.4, 1.4, 0, 0.8, 0.8, 0, 0.7])
    # critic targets at V(s_k)'s positions 0, 3, 6: R_k = A_k + V(s_k) = 1.5, 1.0, 1.0
    assert row_dict(out.returns, 0) == pytest.approx({0: 1.5, 3: 1.0, 6: 1.0})
    assert out.value_mask[0].nonzero().flatten().tolist() == [0, 3, 6]


# ----------------------------------------------------------------------------- step_gae


def test_step_gae_golden_done():
    out = compute_advantages(golden_batch(done=True), G_VALUES, AdvantageConfig(gamma=0.9, lam=0.8))
    # V(s0)=0.5, V(s1)=0.3, done -> V(s2)=0
    # delta1 = 1.0 + 0 - 0.3 = 0.7                  A1 = 0.7
    # delta0 = 0.2 + 0.9*0.3 - 0.5 = -0.03          A0 = -0.03 + 0.72*0.7 = 0.474
    assert out.advantages[0].tolist() == pytest.approx([0, 0, 0.474, 0.474, 0, 0.7, 0.7])
    # returns R_k = A_k + V(s_k): 0.974 at position 1, 1.0 at position 4
    assert row_dict(out.returns, 0) == pytest.approx({1: 0.974, 4: 1.0})
    assert out.value_mask[0].tolist() == [False, True, False, False, True, False, False]


def test_truncated_episode_bootstraps_from_last_state_not_zero():
    """Pitfall (c): a truncated episode bootstraps from the value of its last state, never from 0."""
    # truncated right after a tool result (a turn-limit cut): the last state is the observation token
    t = make_traj(1, [(1, 1), (1, 0)], [0.0, 0.0], done=False, truncated=True, tail_obs=2)
    b = collate([t], pad_id=0)  # 0 prompt | 1 act0 | 2 obs | 3 act1 | 4,5 obs (last_index 5)
    v = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    out = compute_advantages(b, v, AdvantageConfig(gamma=0.5, lam=1.0))
    assert out.advantages[0, 3].item() == pytest.approx(1.0)  # 0 + 0.5 * 2.0 - 0
    tok = compute_advantages(b, v, AdvantageConfig(estimator="token_gae", gamma=0.5, lam=1.0))
    assert tok.advantages[0, 3].item() == pytest.approx(1.0)


def test_token_budget_cut_bootstraps_from_the_cut_steps_state():
    """A cut inside the last step (its last token is an action token) bootstraps from V(s_k) of the
    cut step, not from the value at the cut token (an action position no critic is trained at)."""
    out = compute_advantages(
        golden_batch(done=False, truncated=True), G_VALUES, AdvantageConfig(gamma=0.9, lam=0.8)
    )
    # layout G: V(s0) = values[1] = 0.5, V(s1) = values[4] = 0.3; the cut token is 6 (values[6] = 0.4)
    # bootstrap after the cut step 1 = V(s1) = 0.3
    # delta1 = 1.0 + 0.9*0.3 - 0.3 = 0.97           A1 = 0.97
    # delta0 = 0.2 + 0.9*0.3 - 0.5 = -0.03          A0 = -0.03 + 0.72*0.97 = 0.6684
    # (values[6] would give A1 = 1.06, A0 = 0.7332; bootstrapping from 0 would give A1 = 0.7)
    assert out.advantages[0].tolist() == pytest.approx([0, 0, 0.6684, 0.6684, 0, 0.97, 0.97])
    # critic: R0 = A0 + V(s0) = 1.1684 at position 1; no target at the cut step's state (position 4)
    assert row_dict(out.returns * out.value_mask, 0) == pytest.approx({1: 1.1684})
    assert out.value_mask[0].nonzero().flatten().tolist() == [1]
    # with the in-step token refinement: same A_k on the first token, no targets on the cut step
    refined = compute_advantages(
        golden_batch(done=False, truncated=True),
        G_VALUES,
        AdvantageConfig(gamma=0.9, lam=0.8, token_level_refine=True),
    )
    assert refined.advantages[0, 5].item() == pytest.approx(0.97)  # first token keeps A_k
    assert not bool(refined.value_mask[0, 4:].any())  # token states of the cut step: no target
    # token-level: action tokens 2, 3, 5, 6; V before them = values[1], [2], [4], [5] = 0.5, 9, 0.3, 9
    # bootstrap = V(s1) = values[4] = 0.3; rewards 0.2 on token 3, 1.0 on token 6; gamma 0.5, lam 1
    tok = compute_advantages(
        golden_batch(done=False, truncated=True), G_VALUES, AdvantageConfig("token_gae", gamma=0.5, lam=1.0)
    )
    # pos6: 1.0 + 0.5*0.3 - 9 = -7.85 ; pos5: 0 + 0.5*9 - 0.3 + 0.5*(-7.85) = 0.275
    # pos3: 0.2 + 0.5*0.3 - 9 + 0.5*0.275 = -8.5125 ; pos2: 0 + 0.5*9 - 0.5 + 0.5*(-8.5125) = -0.25625
    assert tok.advantages[0].tolist() == pytest.approx([0, 0, -0.25625, -8.5125, 0, 0.275, -7.85])
    # targets at t - 1 of step 0's tokens only (positions 1, 2); none for the cut step (4, 5)
    assert tok.value_mask[0].nonzero().flatten().tolist() == [1, 2]


def test_step_gae_matches_per_step_loop_on_random_batches():
    for seed in range(40):
        trajs, b, values = random_batch(seed)
        for gamma, lam in [(0.99, 0.95), (1.0, 1.0), (0.7, 0.3)]:
            out = compute_advantages(b, values, AdvantageConfig(gamma=gamma, lam=lam))
            for i, t in enumerate(trajs):
                tok, ret = ref_step_gae(t, values[i].tolist(), gamma, lam)
                got = {
                    p: float(out.advantages[i, p]) for p in range(b.input_ids.shape[1]) if b.action_mask[i, p]
                }
                assert got == pytest.approx(tok, abs=1e-6)
                assert not bool((out.advantages[i] != 0)[~b.action_mask[i]].any())
                got_ret = {
                    p: float(out.returns[i, p]) for p in out.value_mask[i].nonzero().flatten().tolist()
                }
                assert got_ret == pytest.approx(ret, abs=1e-6)


def test_step_gae_token_level_refine_golden():
    v = torch.tensor([[0.0, 0.5, 0.6, 9.0, 0.3, 0.1, 9.0]])
    b = golden_batch(done=True)
    cfg = AdvantageConfig(gamma=0.9, lam=0.8, token_level_refine=True, token_lam=1.0)
    out = compute_advantages(b, v, cfg)
    # step-level (as the done golden): A0 = 0.474, A1 = 0.7, G0 = 0.974, G1 = 1.0
    # token_lam=1: A_{k,j} = G_k - values[t_j - 1]
    # pos2: 0.974 - 0.5 = 0.474 (= A0) ; pos3: 0.974 - 0.6 = 0.374 ; pos5: 1.0 - 0.3 = 0.7 ; pos6: 1.0 - 0.1 = 0.9
    assert out.advantages[0].tolist() == pytest.approx([0, 0, 0.474, 0.374, 0, 0.7, 0.9])
    assert row_dict(out.returns, 0) == pytest.approx({1: 0.974, 2: 0.974, 4: 1.0, 5: 1.0})
    cfg0 = AdvantageConfig(gamma=0.9, lam=0.8, token_level_refine=True, token_lam=0.0)
    out0 = compute_advantages(b, v, cfg0)
    # token_lam=0: inner token delta = u_{j+1} - u_j, last token G_k - u_last
    # pos2: 0.6 - 0.5 = 0.1 ; pos3: 0.974 - 0.6 = 0.374 ; pos5: 0.1 - 0.3 = -0.2 ; pos6: 1.0 - 0.1 = 0.9
    assert out0.advantages[0].tolist() == pytest.approx([0, 0, 0.1, 0.374, 0, -0.2, 0.9])


def test_refine_first_token_gets_step_advantage_on_random_batches():
    for seed in range(20):
        _, b, values = random_batch(seed, min_steps=1)
        plain = compute_advantages(b, values, AdvantageConfig())
        refined = compute_advantages(b, values, AdvantageConfig(token_level_refine=True))
        first = step_first_positions(torch.where(b.action_mask, b.step_index, -1), b.step_mask.shape[1])
        for i, k in b.step_mask.nonzero().tolist():
            p = int(first[i, k])
            assert refined.advantages[i, p].item() == pytest.approx(plain.advantages[i, p].item(), abs=1e-5)
        assert not bool((refined.advantages != 0)[~b.action_mask].any())


def test_extra_token_rewards_summed_per_step():
    b = golden_batch(done=True)
    extra = torch.zeros(1, 7)
    extra[0, 2], extra[0, 3], extra[0, 4] = -0.1, -0.1, -5.0  # position 4 is an obs: ignored
    out = compute_advantages(b, G_VALUES, AdvantageConfig(gamma=0.9, lam=0.8), extra_token_rewards=extra)
    # r0 = 0.2 - 0.2 = 0.0: delta0 = 0 + 0.27 - 0.5 = -0.23 ; A0 = -0.23 + 0.72*0.7 = 0.274
    assert out.advantages[0, 2].item() == pytest.approx(0.274)
    tok = compute_advantages(
        b, torch.zeros(1, 7), AdvantageConfig("token_gae", gamma=1.0, lam=1.0), extra_token_rewards=extra
    )
    # per token, gamma=lam=1, V=0: A = sum of rewards from the token on: pos2: -0.1-0.1+0.2+1.0 = 1.0
    assert tok.advantages[0].tolist() == pytest.approx([0, 0, 1.0, 1.1, 0, 1.0, 1.0])


# ----------------------------------------------------------------------------- token-level estimators

# Layout "H": 0 prompt | 1,2 act step 0 | 3 obs | 4 act step 1; values 0.1 .. 0.5
H_VALUES = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])


def h_batch(**kw):
    return collate([make_traj(1, [(2, 1), (1, 0)], [1.0, 2.0], **kw)], pad_id=0)


def test_token_gae_golden():
    out = compute_advantages(h_batch(), H_VALUES, AdvantageConfig("token_gae", gamma=0.5, lam=1.0))
    # V before token 1 = v0 = 0.1, token 2 = v1 = 0.2, token 4 = v3 = 0.4 (after the obs)
    # pos4: delta = 2 + 0 - 0.4 = 1.6                        A = 1.6
    # pos2: delta = 1 + 0.5*0.4 - 0.2 = 1.0 (next = token 4)  A = 1.0 + 0.5*1.6 = 1.8
    # pos1: delta = 0 + 0.5*0.2 - 0.1 = 0.0                  A = 0.0 + 0.5*1.8 = 0.9
    assert out.advantages[0].tolist() == pytest.approx([0, 0.9, 1.8, 0, 1.6])
    # returns A + V at the state positions 0, 1, 3: 1.0, 2.0, 2.0 (= discounted returns, lam=1)
    assert row_dict(out.returns, 0) == pytest.approx({0: 1.0, 1: 2.0, 3: 2.0})
    assert out.value_mask[0].tolist() == [True, True, False, True, False]


def test_observation_span_does_not_reset_returns_in_token_gae():
    """Pitfall (b): step 1's reward flows back to step 0's tokens across the observation."""
    out = compute_advantages(h_batch(), torch.zeros(1, 5), AdvantageConfig("token_gae", gamma=1.0, lam=1.0))
    # V = 0, gamma = lam = 1: A = return-to-go = 1 + 2 = 3 on step 0; a reset would give 1
    assert out.advantages[0].tolist() == pytest.approx([0, 3.0, 3.0, 0, 2.0])
    # discounting counts action tokens only: gamma=0.5 -> pos2: 1 + 0.5*2 = 2 (not 1 + 0.25*2)
    out = compute_advantages(h_batch(), torch.zeros(1, 5), AdvantageConfig("token_gae", gamma=0.5, lam=1.0))
    assert out.advantages[0].tolist() == pytest.approx([0, 1.0, 2.0, 0, 2.0])


def test_token_gae_matches_reference_on_random_batches():
    for seed in range(40):
        trajs, b, values = random_batch(seed)
        for gamma, lam in [(0.99, 0.95), (1.0, 1.0), (0.6, 0.4)]:
            out = compute_advantages(b, values, AdvantageConfig("token_gae", gamma=gamma, lam=lam))
            for i, t in enumerate(trajs):
                ref = ref_token_gae(t, values[i].tolist(), ref_last_token_rewards(t), gamma, lam)
                got = {
                    p: float(out.advantages[i, p]) for p in range(b.input_ids.shape[1]) if b.action_mask[i, p]
                }
                assert got == pytest.approx(ref, abs=1e-5)


def test_final_reward_golden():
    out = compute_advantages(
        h_batch(is_solved=1.0), H_VALUES, AdvantageConfig("final_reward", gamma=0.5, lam=1.0)
    )
    # step rewards ignored; IsSolved=1 on token 4
    # pos4: 1 - 0.4 = 0.6 ; pos2: 0 + 0.5*0.4 - 0.2 = 0 -> A = 0.5*0.6 = 0.3 ; pos1: 0 + 0.5*0.3 = 0.15
    assert out.advantages[0].tolist() == pytest.approx([0, 0.15, 0.3, 0, 0.6])


def test_steptool_compat_hand_example():
    # 0 prompt | 1 act0 | 2 obs | 3 act1 | 4 obs | 5,6 act2 ; rewards [0.5, 0.4, 1.0], n = 3
    b = collate([make_traj(1, [(1, 1), (1, 1), (2, 0)], [0.5, 0.4, 1.0])], pad_id=0)
    v = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    cfg = AdvantageConfig("steptool_compat", gamma=1.0, lam=0.5, whiten=False)
    out = compute_advantages(b, v, cfg)
    # token rewards: pos1 = 0.5*2 = 1.0, pos3 = 0.4*1 = 0.4, pos6 = 1.0*0 = 0
    # V_tok = values[t-1] on action tokens, 0 elsewhere: pos1 .1, pos3 .3, pos5 .5, pos6 .6
    # t=6: d = 0 + 0 - .6 = -.6                A6 = -.6
    # t=5: d = 0 + .6 - .5 = .1                A5 = .1 + .5*(-.6) = -.2
    # t=4 (obs): d = 0 + .5 - 0 = .5           A4 = .5 + .5*(-.2) = .4
    # t=3: d = .4 + 0 - .3 = .1                A3 = .1 + .5*.4 = .3
    # t=2 (obs): d = 0 + .3 - 0 = .3           A2 = .3 + .5*.3 = .45
    # t=1: d = 1.0 + 0 - .1 = .9               A1 = .9 + .5*.45 = 1.125
    assert out.advantages[0].tolist() == pytest.approx([0, 1.125, 0, 0.3, 0, -0.2, -0.6])
    # returns A + V_tok at state positions t-1: 1.225@0, 0.6@2, 0.3@4, 0.0@5
    assert out.returns[0].tolist() == pytest.approx([1.225, 0, 0.6, 0, 0.3, 0.0, 0])
    assert out.value_mask[0].nonzero().flatten().tolist() == [0, 2, 4, 5]
    # default: whitened over action tokens, like trl 0.10 (mean 0.15625; unbiased var)
    white = compute_advantages(b, v, AdvantageConfig("steptool_compat", gamma=1.0, lam=0.5))
    raw = torch.tensor([1.125, 0.3, -0.2, -0.6])
    expected = (raw - raw.mean()) / torch.sqrt(raw.var() + 1e-8)
    assert white.advantages[0, [1, 3, 5, 6]].tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_isolated_steps_golden():
    out = compute_advantages(golden_batch(), G_VALUES, AdvantageConfig("isolated_steps"))
    # A_k = r_k - V(s_k): 0.2 - 0.5 = -0.3 ; 1.0 - 0.3 = 0.7 ; returns r_k at positions 1 and 4
    assert out.advantages[0].tolist() == pytest.approx([0, 0, -0.3, -0.3, 0, 0.7, 0.7])
    assert row_dict(out.returns, 0) == pytest.approx({1: 0.2, 4: 1.0})


# ----------------------------------------------------------------------------- critic-free estimators


def group_batch():
    trajs = [
        make_traj(1, [(1, 0)], [0.3], is_solved=1.0, group_id="a"),
        make_traj(1, [(2, 0)], [0.3], is_solved=0.0, group_id="a"),
        make_traj(1, [(1, 1), (1, 0)], [0.4, 0.5], is_solved=0.5, group_id="a"),
        make_traj(1, [(1, 0)], [0.3], is_solved=1.0, group_id="b"),
    ]
    return collate(trajs, pad_id=0)


def first_action_adv(out, b):
    return [float(out.advantages[i][b.action_mask[i]][0]) for i in range(b.size)]


def test_grpo_golden():
    b = group_batch()
    out = compute_advantages(b, None, AdvantageConfig("grpo"))
    # group a: R = [1, 0, 0.5], mean 0.5, unbiased std = sqrt((0.25 + 0.25 + 0) / 2) = 0.5
    # A = [0.5/0.5, -0.5/0.5, 0] = [1, -1, 0] ; group b alone: mean 0, std 1 -> A = 1
    assert first_action_adv(out, b) == pytest.approx([1.0, -1.0, 0.0, 1.0], abs=1e-5)
    assert out.advantages[1].tolist() == pytest.approx([0, -1.0, -1.0, 0], abs=1e-5)  # every action token
    assert not bool(out.value_mask.any())
    no_std = compute_advantages(b, None, AdvantageConfig("grpo", norm_by_std=False))
    assert first_action_adv(no_std, b) == pytest.approx([0.5, -0.5, 0.0, 1.0])
    # outcome = sum of step rewards: group a R = [0.3, 0.3, 0.9], mean 0.5 -> [-0.2, -0.2, 0.4]
    summed = compute_advantages(b, None, AdvantageConfig("grpo", norm_by_std=False, outcome="sum"))
    assert first_action_adv(summed, b) == pytest.approx([-0.2, -0.2, 0.4, 0.3])


def test_rloo_golden():
    b = group_batch()
    out = compute_advantages(b, None, AdvantageConfig("rloo"))
    # A_i = R_i - mean of the others: 1 - (0 + 0.5)/2 = 0.75 ; 0 - 0.75 = -0.75 ; 0.5 - 0.5 = 0
    assert first_action_adv(out, b) == pytest.approx([0.75, -0.75, 0.0, 1.0])


def test_reinforce_pp_golden():
    out = compute_advantages(h_batch(), None, AdvantageConfig("reinforce_pp", gamma=0.5))
    # returns-to-go over action tokens: pos4: 2 ; pos2: 1 + 0.5*2 = 2 ; pos1: 0 + 0.5*2 = 1
    assert out.returns[0].tolist() == pytest.approx([0, 1.0, 2.0, 0, 2.0])
    # whitened over [1, 2, 2]: mean 5/3, unbiased var ((2/3)^2 + 2*(1/3)^2) / 2 = 1/3
    s = math.sqrt(1 / 3)
    assert out.advantages[0].tolist() == pytest.approx([0, -2 / 3 / s, 1 / 3 / s, 0, 1 / 3 / s], abs=1e-6)


# ----------------------------------------------------------------------------- all estimators


def test_every_estimator_keeps_advantages_on_action_tokens_and_targets_off_padding():
    for seed in range(15):
        _, b, values = random_batch(seed)
        for name in ADVANTAGE_ESTIMATORS:
            for refine in (False, True):
                out = compute_advantages(b, values, AdvantageConfig(name, token_level_refine=refine))
                assert out.advantages.shape == b.input_ids.shape, name
                assert torch.isfinite(out.advantages).all() and out.advantages.abs().max() < 1e3, name
                assert not bool((out.advantages != 0)[~b.action_mask].any()), name
                assert not bool((out.value_mask & ~b.attention_mask).any()), name
                assert not bool((out.returns != 0)[~out.value_mask & ~b.action_mask].any()), name


def test_registry():
    assert get_advantage_estimator("step_gae") is ADVANTAGE_ESTIMATORS["step_gae"]
    with pytest.raises(KeyError, match="known: .*step_gae"):
        get_advantage_estimator("nope")
    with pytest.raises(ValueError):
        register_advantage("step_gae")(lambda *a, **k: None)

    @register_advantage("zero_for_test")
    def zero(batch, values, cfg, *, extra_token_rewards=None):
        return ADVANTAGE_ESTIMATORS["grpo"](batch, values, cfg)

    try:
        assert compute_advantages(
            golden_batch(), None, AdvantageConfig("zero_for_test")
        ).advantages.shape == (1, 7)
    finally:
        del ADVANTAGE_ESTIMATORS["zero_for_test"]
    with pytest.raises(ValueError, match="needs critic values"):
        compute_advantages(golden_batch(), None, AdvantageConfig("step_gae"))


# ----------------------------------------------------------------------------- length bias


def test_per_step_normalization_bias():
    """Pitfall (e): normalizing per step lets the policy buy a better score with extra steps.

    Conclusion. (1) Gradient: with a loss averaged per episode over its steps
    ("seq-mean-token-mean"), a failing episode padded with 4 cheap steps pushes its wrong final
    answer down 5x less than the short failing episode, so padding failures is favoured; the
    default "token-mean" (a sum over steps with one batch-wide normalizer) pushes both answers
    down equally. (2) Score: the mean of step rewards ranks a padded failure above the short one
    even when every padded step has a negative reward (e.g. after centering), while the sum of
    step rewards (the return that step_gae uses, gamma = lam = 1) ranks it below.
    Caveat: with StepTool's non-negative shaping, a cheap successful call earns
    alpha/(1+alpha) > 0, so the sum does reward extra successful calls by exactly what the reward
    specifies (bounded by gamma < 1); that is the reward design, not a normalization artefact.
    """
    # (1) one action token per step; both episodes failed: advantage -1 on every step
    short = make_traj(1, [(1, 0)], [0.0])
    padded = make_traj(1, [(1, 1)] * 4 + [(1, 0)], [0.0] * 5)
    b = collate([short, padded], pad_id=0)
    adv = -1.0 * b.action_mask.float()
    final_short, final_padded = (0, 1), (1, int(step_last_positions(b.step_index, 5)[1, 4]))
    grads = {}
    for agg in ("seq-mean-token-mean", "token-mean"):
        logp = torch.full(b.input_ids.shape, -1.0, requires_grad=True)
        loss, _ = ppo_policy_loss(logp, logp.detach(), adv, b.action_mask, agg=agg)
        loss.backward()
        grads[agg] = (logp.grad[final_short].item(), logp.grad[final_padded].item())
    # d loss / d logp of the wrong answer = -A * weight: seq-mean: 1/(2*1) vs 1/(2*5)
    assert grads["seq-mean-token-mean"] == pytest.approx((0.5, 0.1))
    # token-mean: 1/6 for every token (6 action tokens in the batch)
    assert grads["token-mean"] == pytest.approx((1 / 6, 1 / 6))
    assert aggregate(adv, b.action_mask, "token-mean").item() == pytest.approx(-1.0)

    # (2) centered step rewards: a wrong answer -1.0, a cheap useless call -0.1
    short = make_traj(1, [(1, 0)], [-1.0])
    padded = make_traj(1, [(1, 1)] * 4 + [(1, 0)], [-0.1] * 4 + [-1.0])
    mean_short, mean_padded = -1.0, (4 * -0.1 - 1.0) / 5  # -1.0 vs -0.28: the mean prefers padding
    assert mean_padded > mean_short
    b = collate([short, padded], pad_id=0)
    out = compute_advantages(b, torch.zeros(b.input_ids.shape), AdvantageConfig(gamma=1.0, lam=1.0))
    ret_short, ret_padded = out.advantages[0, 1].item(), out.advantages[1, 1].item()
    assert (ret_short, ret_padded) == pytest.approx((-1.0, -1.4))  # the sum prefers the short episode
    # caveat: a successful call that contributed nothing is worth alpha/(1+alpha) = 0.5 (alpha=1)
    assert shape_step_rewards([1.0], [0.0], None) == [0.5]
