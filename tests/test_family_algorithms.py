"""Golden values for the distinguishing mechanisms of ARPO, ArCHer and CodeTool (hand-computed, or
checked against an independent brute-force reference written here)."""

from __future__ import annotations

import copy
import math
import random
from types import SimpleNamespace

import pytest
import torch

from steprl.algorithms import archer as H
from steprl.algorithms import arpo as A
from steprl.algorithms import codetool as C
from steprl.protocol import StepRecord, Trajectory, collate

# ============================================================================ ARPO


def test_branch_probability_and_clipping():
    assert A.branch_probability(0.7, 0.2, alpha=0.5, beta=0.2) == pytest.approx(0.6)  # 0.5 + 0.2 * 0.5
    assert A.branch_probability(0.2, 0.7, alpha=0.5, beta=0.2) == pytest.approx(0.4)  # dH = -0.5
    assert A.branch_probability(0.9, 0.4, alpha=0.9, beta=1.0) == 1.0  # 1.4 clipped
    assert A.branch_probability(0.1, 0.9, alpha=0.1, beta=0.5) == 0.0  # -0.3 clipped
    # at most beam_size - 1 branches, never past the budget, none when u >= p
    assert A.num_branches(0.6, 0.59, beam_size=3, remaining=5) == 2
    assert A.num_branches(0.6, 0.59, beam_size=3, remaining=1) == 1
    assert A.num_branches(0.6, 0.60, beam_size=3, remaining=5) == 0
    assert A.num_branches(1.0, 0.0, beam_size=3, remaining=0) == 0
    assert A.num_branches(1.0, 0.0, beam_size=1, remaining=4) == 0


def test_entropy_normalisation():
    assert float(A.normalized_entropy_from_logits(torch.zeros(7))) == pytest.approx(1.0)  # uniform
    peaked = torch.tensor([50.0, 0.0, 0.0, 0.0])
    assert float(A.normalized_entropy_from_logits(peaked)) == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([0.0, 0.0, -1e9, -1e9])  # two equal tokens out of 4: log 2 / log 4
    assert float(A.normalized_entropy_from_logits(half)) == pytest.approx(0.5, abs=1e-6)
    # top-k: renormalize the head, divide by log k
    p = [0.5, 0.25, 0.25]
    h = -sum(x * math.log(x) for x in p)
    assert A.normalized_entropy_from_topk([math.log(x) for x in p]) == pytest.approx(h / math.log(3))
    assert A.normalized_entropy_from_topk([math.log(0.2), math.log(0.2)]) == pytest.approx(1.0)
    assert A.normalized_entropy_from_topk([math.log(0.9)]) == 0.0
    assert A.window_entropy([0.1, 0.2, 0.3, 0.4], 2) == pytest.approx(0.15)
    assert A.window_entropy([0.3], 20) == pytest.approx(0.3)
    assert A.window_entropy(None, 20) is None and A.window_entropy([], 20) is None


def test_hf_engine_entropies_match_a_full_forward(tiny_model_path, tokenizer):
    """The engine's exact entropies equal H / log V of a separate forward over the generated turn."""
    from transformers import AutoModelForCausalLM

    from steprl.engines.hf_engine import HFEngine

    engine = HFEngine(
        tiny_model_path, [tokenizer.convert_tokens_to_ids("<|im_end|>")], tokenizer.pad_token_id
    )
    prompts = [[5, 17, 33, 8, 90], [44, 12]]
    gens = engine.generate(prompts, [8, 8], temperature=1.0, seed=3, entropy_tokens=5)
    plain = engine.generate(prompts, [8, 8], temperature=1.0, seed=3)
    assert [g.token_ids for g in gens] == [g.token_ids for g in plain] and plain[0].entropies is None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    for prompt, gen in zip(prompts, gens, strict=True):
        assert len(gen.entropies) == min(5, len(gen.token_ids))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + gen.token_ids])).logits[0].double()
        for j, got in enumerate(gen.entropies):
            logp = torch.log_softmax(logits[len(prompt) - 1 + j], dim=-1)
            want = float(-(logp.exp() * logp).sum()) / math.log(logits.shape[-1])
            assert got == pytest.approx(want, abs=1e-4)


def test_answer_f1_and_reward():
    assert A.answer_f1("The answer is 57.", "57") == pytest.approx(0.5)  # [answer, is, 57] vs [57]
    assert A.answer_f1("Paris France", "paris") == pytest.approx(2 / 3)
    assert A.answer_f1("a b b", "b c") == pytest.approx(0.5)  # article dropped; b counted once in common
    assert A.answer_f1("", "") == 1.0 and A.answer_f1("x", "") == 0.0 and A.answer_f1(None, "y") == 0.0
    assert A.arpo_reward(False, 1.0, 3) == -1.0  # a format violation overrides everything
    assert A.arpo_reward(True, 0.5, 2, solved=True) == pytest.approx(0.6)
    assert A.arpo_reward(True, 0.5, 2, solved=False) == pytest.approx(0.5)  # bonus needs a correct answer
    assert A.arpo_reward(True, 0.5, 2, solved=False, bonus_requires_correct=False) == pytest.approx(0.6)
    assert A.arpo_reward(True, 0.5, 1, solved=True) == pytest.approx(0.5)  # one tool: no bonus


def _tree():
    """A hand-built branch tree of one group (prompt of 2 tokens, 6 response tokens, token 2 is a tool
    result): A; B branched from A at 3; D branched from B at 5; C independent."""
    cuts = {
        "A": [(0, 10), (3, 11)],
        "B": [(0, 10), (3, 12), (5, 13)],
        "D": [(0, 10), (3, 12), (5, 14)],
        "C": [(0, 20)],
    }
    adv = {"A": 1.0, "B": -1.0, "D": 2.0, "C": 0.5}
    names = list(cuts)
    seg = A.segment_ids_from_cuts([cuts[n] for n in names], [2] * 4, 8)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 2:] = True
    mask[:, 2 + 2] = False  # the tool-result token
    advantages = torch.tensor([adv[n] for n in names]).view(-1, 1) * mask
    return names, seg, mask, advantages


def test_segment_ids_from_cuts():
    names, seg, _, _ = _tree()
    assert seg[names.index("B")].tolist() == [-1, -1, 10, 10, 10, 12, 12, 13]
    assert seg[names.index("C")].tolist() == [-1, -1] + [20] * 6
    with pytest.raises(ValueError, match="start at 0"):
        A.segment_ids_from_cuts([[(1, 3)]], [2], 8)


def test_soft_and_hard_attribution_on_a_branch_tree():
    names, seg, mask, adv = _tree()
    soft = A.attribute_advantages(adv, seg, mask, "soft")
    assert torch.equal(soft, adv)
    hard = A.attribute_advantages(adv, seg, mask, "hard")
    want = {  # by hand: the shared prefix [0, 3) is A, B, D; [3, 5) is B, D; the rest is each one's own
        "A": [0, 0, 2 / 3, 2 / 3, 0, 1, 1, 1],
        "B": [0, 0, 2 / 3, 2 / 3, 0, 0.5, 0.5, -1],
        "D": [0, 0, 2 / 3, 2 / 3, 0, 0.5, 0.5, 2],
        "C": [0, 0, 0.5, 0.5, 0, 0.5, 0.5, 0.5],
    }
    for b, n in enumerate(names):
        assert hard[b].tolist() == pytest.approx(want[n]), n
    # independent brute-force reference over rows sharing (segment, position)
    ref = torch.zeros_like(adv)
    for b in range(4):
        for t in range(8):
            if mask[b, t]:
                rows = [r for r in range(4) if mask[r, t] and seg[r, t] == seg[b, t]]
                ref[b, t] = sum(float(adv[r, t]) for r in rows) / len(rows)
    assert torch.allclose(hard, ref)
    with pytest.raises(ValueError, match="unknown attribution"):
        A.attribute_advantages(adv, seg, mask, "medium")


class ScriptedEngine:
    """Replays each task's demonstration turns and reports fixed entropies (low on the first turn,
    high after a tool result), so branching is decided by the entropy rule alone."""

    def __init__(self, encoder, scripts, h_first=0.2, h_after=0.7):
        self.encoder, self.scripts, self.h = encoder, scripts, (h_first, h_after)

    def generate(self, prompts, max_tokens, temperature, seed=None, entropy_tokens=0):
        from steprl.engines.base import Generation

        out = []
        for p, m in zip(prompts, max_tokens, strict=True):
            key = next(k for k in self.scripts if tuple(p[: len(k)]) == k)
            turn = p[len(key) :].count(self.encoder.eot_id) // 2
            ids = self.scripts[key][turn][:m]
            ent = [self.h[0] if turn == 0 else self.h[1]] * min(entropy_tokens, len(ids))
            out.append(Generation(ids, [-0.5] * len(ids), ids[-1] == self.encoder.eot_id, ent or None))
        return out


@pytest.fixture(scope="module")
def bos_encoder(tokenizer, atlas):
    """The tiny tokenizer made to add a BOS token by default: tool results must still get none."""
    from tokenizers.processors import TemplateProcessing

    from steprl.chat import ChatEncoder

    tok = copy.deepcopy(tokenizer)
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    tok.bos_token = "<|endoftext|>"
    assert tok("x")["input_ids"][0] == bos
    return ChatEncoder(tok, [t.schema() for t in atlas.tools()], atlas.system_prompt), bos


def _tree_worker(encoder, atlas, tasks):
    from steprl.episode import EpisodeBudget
    from tools_env.env import ToolEnv
    from tools_env.parsers import get_parser

    scripts = {}
    for t in tasks:
        demo = atlas.demonstration(t, random.Random(0), 0.0)
        scripts[tuple(encoder.start(t.question)[1])] = [
            encoder.action_ids(m["content"]) for m in demo if m["role"] == "assistant"
        ]
    return SimpleNamespace(
        engine=ScriptedEngine(encoder, scripts),
        env=ToolEnv(),
        encoders={"atlas": encoder},
        parse=get_parser("hermes"),
        budget=EpisodeBudget(8, 2000, 200),
    )


def test_arpo_tree_rollout_branches_share_prefixes(bos_encoder, atlas):
    from steprl.methods.arpo import tree_rollout

    encoder, bos = bos_encoder
    task = atlas.tasks("train", 1, 0)[0]  # two lookups, then the answer
    worker = _tree_worker(encoder, atlas, [task])
    spec = dict(group_size=5, initial_rollouts=1, alpha=0.5, beta=1.0, beam_size=3, entropy_window=20)
    trajs, stats = tree_rollout(worker, [task.to_dict()], spec, 1.0, 0)  # p = clip(0.5 + 0.5) = 1
    assert len(trajs) == 5 and {t.group_id for t in trajs} == {task.task_id}
    assert stats["arpo/branches"] == 4 and stats["arpo/fills"] == 0 and stats["arpo/branch_points"] == 2
    source = next(t for t in trajs if "arpo_branch_of" not in t.meta)
    forks = [t for t in trajs if "arpo_branch_of" in t.meta]
    assert sorted(t.meta["arpo_forked_at"] for t in forks) == [1, 1, 2, 2]
    for t in trajs:
        assert t.end_reason == "answer" and t.response_ids == source.response_ids
        assert t.meta["arpo_h_initial"] == pytest.approx(0.2)  # its own first turn, shared by its branches
        assert "replay_mismatch" not in t.meta  # the fork's session was rebuilt by replaying the calls
        obs = [tok for tok, o in zip(t.response_ids, t.obs_mask, strict=True) if o]
        assert obs and bos not in obs  # tool results are template deltas, never with a BOS
    (s0, a), (s1, b) = source.meta["arpo_cuts"][:2]
    first_obs_end = sum(1 for k in source.step_index if k < 1)
    assert s0 == 0 and s1 == first_obs_end
    for f in forks:  # a fork shares every cut of its source before the branch point, then has its own
        at = sum(1 for k in source.step_index if k < f.meta["arpo_forked_at"])
        assert f.meta["arpo_cuts"][:-1] == [c for c in source.meta["arpo_cuts"] if c[0] < at]
        assert f.meta["arpo_cuts"][-1][0] == at
    segs = [c[1] for t in trajs for c in t.meta["arpo_cuts"]]
    assert sum(segs.count(s) == 1 for s in set(segs)) == 5  # each trajectory's own tail is unique


def test_arpo_tree_rollout_fills_the_budget_without_branching(bos_encoder, atlas):
    from steprl.methods.arpo import tree_rollout

    encoder, _ = bos_encoder
    tasks = atlas.tasks("train", 2, 0)
    worker = _tree_worker(encoder, atlas, tasks)
    spec = dict(group_size=4, initial_rollouts=2, alpha=0.5, beta=-1.0, beam_size=2, entropy_window=20)
    trajs, stats = tree_rollout(worker, [t.to_dict() for t in tasks], spec, 1.0, 0)  # p = 0
    assert stats["arpo/branches"] == 0 and stats["arpo/fills"] == 4
    assert [t.group_id for t in trajs] == [tasks[0].task_id] * 4 + [tasks[1].task_id] * 4
    assert all(len(t.meta["arpo_cuts"]) == 1 for t in trajs)


# ============================================================================ ArCHer


def _traj(prompt, spans, truncated=False, rewards=()):
    """spans: (num tokens, is_action, step) in order."""
    t = Trajectory(task_id="t", prompt_ids=list(range(100, 100 + prompt)))
    for n, act, k in spans:
        t.append(list(range(n)), is_action=act, step=k)
    steps = 1 + max(k for _, _, k in spans)
    t.steps = [StepRecord(text="", reward=r) for r in rewards] or [StepRecord(text="") for _ in range(steps)]
    t.truncated, t.done = truncated, not truncated
    t.end_reason = "max_turns" if truncated else "answer"
    return t


def test_archer_step_positions():
    done = _traj(3, [(2, True, 0), (2, False, 0), (3, True, 1)], rewards=(0.5, 1.0))
    cut = _traj(2, [(1, True, 0), (3, False, 0)], truncated=True, rewards=(0.2,))
    pos = H.step_positions(collate([done, cut], 0))
    # done: prompt 0..2, action 0 at 3-4, result at 5-6, action 1 at 7-9
    assert pos["state"][0].tolist() == [2, 6] and pos["action"][0].tolist() == [4, 9]
    assert pos["next_state"][0].tolist() == [6, 9] and pos["terminal"][0].tolist() == [False, True]
    # truncated: the last step bootstraps from the episode's last token (after its tool result)
    assert pos["state"][1].tolist() == [1, 0] and pos["action"][1].tolist() == [2, 0]
    assert pos["next_state"][1].tolist() == [5, 0] and pos["terminal"][1].tolist() == [False, False]


def test_archer_td_targets_double_q_and_advantage():
    mask = torch.tensor([[True, True], [True, False]])
    r = torch.tensor([[0.5, 1.0], [0.2, 0.0]])
    next_v = torch.tensor([[0.8, 0.3], [0.4, 9.0]])
    terminal = torch.tensor([[False, True], [False, False]])
    y = H.td_q_targets(r, next_v, terminal, mask, gamma=0.9)
    assert torch.allclose(y, torch.tensor([[0.5 + 0.9 * 0.8, 1.0], [0.2 + 0.9 * 0.4, 0.0]]))
    q1, q2 = torch.tensor([[1.0, 3.0], [0.0, 5.0]]), torch.tensor([[2.0, 2.0], [-1.0, 5.0]])
    assert H.double_q_min(q1, q2).tolist() == [[1.0, 2.0], [-1.0, 5.0]]
    v = torch.tensor([[0.5, 1.0], [0.5, 7.0]])
    assert H.utterance_advantages(q1, q2, v, mask).tolist() == [[0.5, 1.0], [-1.5, 0.0]]


def test_archer_soft_update():
    t, o = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    H.soft_update_([t], [o], 0.25)
    assert t.tolist() == pytest.approx([1.5, 3.0])  # 0.75 * t + 0.25 * o
    H.soft_update_([t], [o], 0.25)
    assert t.tolist() == pytest.approx([1.875, 3.75])
    H.soft_update_([t], [o], 1.0)
    assert t.tolist() == [3.0, 6.0]
    with pytest.raises(ValueError, match="tau"):
        H.soft_update_([t], [o], 0.0)
    with pytest.raises(ValueError, match="shape"):
        H.soft_update_([t], [torch.zeros(3)], 0.5)


# ============================================================================ CodeTool


# root 0 -> 1, 2, 7 ; 1 -> 3, 4 ; 2 -> 5, 6, 8 (8: no rollout below it)
PARENTS = [-1, 0, 0, 1, 1, 2, 2, 0, 2]
OUTCOMES = [[], [], [], [1.0], [0.0], [0.0, 0.0], [0.5], [1.0], []]


def test_codetool_potential_labels():
    soft = C.node_potentials(PARENTS, OUTCOMES, "soft")
    want = [2.5 / 6, 0.5, 0.5 / 3, 1.0, 0.0, 0.0, 0.5, 1.0, None]
    assert soft[:8] == pytest.approx(want[:8]) and soft[8] is None
    hard = C.node_potentials(PARENTS, OUTCOMES, "hard")
    assert hard == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, None]  # 0.5 (unsure) is not a success
    assert sorted(C.sibling_label_pairs(PARENTS, soft)) == sorted([(1, 2), (7, 1), (7, 2), (3, 4), (6, 5)])
    assert sorted(C.sibling_label_pairs(PARENTS, hard)) == sorted([(1, 2), (7, 2), (3, 4)])  # ties: no pair
    with pytest.raises(ValueError, match="before it"):
        C.node_potentials([1, -1], [[1.0], []], "soft")
    assert C.rollout_outcome(0.5, [0.2, 0.4], "solved") == 0.5
    assert C.rollout_outcome(0.0, [0.2, 0.4, 0.0], "return") == pytest.approx(0.2)


def test_codetool_on_the_spot_reward_and_best_candidate():
    assert C.on_the_spot_reward(StepRecord(text="", succ_calling=1.0)) == 1.0
    assert C.on_the_spot_reward(StepRecord(text="", succ_calling=0.0)) == 0.0  # the code raised
    assert C.on_the_spot_reward(StepRecord(text="", parse_error="not closed")) == 0.0
    assert C.on_the_spot_reward(StepRecord(text="", is_final=True)) == 1.0
    assert C.select_best([1.0, 0.0, 1.0], [0.2, 0.9, 0.7]) == 2  # totals 1.2, 0.9, 1.7
    assert C.select_best([0.0, 1.0], [0.9, 0.0]) == 1  # 0.9 < 1.0: the code that ran wins
    assert C.select_best([1.0, 1.0], [0.5, 0.5]) == 0  # a tie keeps the first
    with pytest.raises(ValueError):
        C.select_best([], [])


GOOD = '<tool_call>\n{"name": "python", "arguments": {"code": "print(%s)"}}\n</tool_call>'
BAD = '<tool_call>\n{"name": "python", "arguments": {"code": "print(undefined_name)"}}\n</tool_call>'


class MathScriptEngine:
    """First turn: alternately a program that prints the answer and one that raises. Later turns:
    answer with the number the last tool result showed (or 0 after an error)."""

    def __init__(self, encoder, answers):
        self.encoder, self.answers, self.calls = encoder, answers, 0

    def generate(self, prompts, max_tokens, temperature, seed=None, entropy_tokens=0):
        from steprl.engines.base import Generation

        out = []
        for p in prompts:
            key = next(k for k in self.answers if tuple(p[: len(k)]) == k)
            rest = self.encoder.tokenizer.decode(p[len(key) :])
            if not rest:
                text = (GOOD % self.answers[key]) if self.calls % 2 == 0 else BAD
                self.calls += 1
            else:
                shown = rest.split("<tool_response>")[-1].split("</tool_response>")[0].strip()
                text = f"The answer is {shown if shown.isdigit() else 0}."
            ids = self.encoder.action_ids(text)
            out.append(Generation(ids, [-0.5] * len(ids), True))
        return out


@pytest.fixture(scope="module")
def math_worker(tokenizer):
    from steprl.chat import ChatEncoder
    from steprl.episode import EpisodeBudget
    from tools_env import get_suite
    from tools_env.env import ToolEnv
    from tools_env.parsers import get_parser

    suite = get_suite("math")
    encoder = ChatEncoder(tokenizer, [t.schema() for t in suite.tools()], suite.system_prompt)
    tasks = suite.tasks("train", 2, 0)
    answers = {tuple(encoder.start(t.question)[1]): t.answer for t in tasks}
    worker = SimpleNamespace(
        engine=MathScriptEngine(encoder, answers),
        env=ToolEnv(),
        encoders={"math": encoder},
        parse=get_parser("hermes"),
        budget=EpisodeBudget(4, 1000, 200),
    )
    return worker, tasks


def test_codetool_tree_labels_siblings_by_their_completions(math_worker):
    from steprl.methods.codetool import explore_trees, tree_sibling_pairs
    from steprl.prm import examples_from_sibling_pairs
    from workers.reward import score_trajectory

    worker, tasks = math_worker
    worker.engine.calls = 0
    res = explore_trees(
        worker, [t.to_dict() for t in tasks], depth=1, width=2, completions=2, temperature=1.0, seed=0
    )
    nodes = res["nodes"]
    assert [n["parent"] for n in nodes] == [-1, -1, 0, 0, 1, 1]  # two roots, two children each
    assert len(res["trajectories"]) == 8 and sorted(res["owner"]) == [2, 2, 3, 3, 4, 4, 5, 5]
    assert worker.env.num_sessions == 0  # every session (nodes, forks, completions) was closed
    scored = [
        score_trajectory(t, tasks[nodes[o]["task"]])
        for t, o in zip(res["trajectories"], res["owner"], strict=True)
    ]
    values = [C.rollout_outcome(t.is_solved, t.step_rewards, "solved") for t in scored]
    by_node = {o: [] for o in res["owner"]}
    for o, v in zip(res["owner"], values, strict=True):
        by_node[o].append(v)
    assert by_node == {2: [1.0, 1.0], 3: [0.0, 0.0], 4: [1.0, 1.0], 5: [0.0, 0.0]}  # good code, bad code
    pairs = tree_sibling_pairs(nodes, res["owner"], values, "hard")
    assert len(pairs) == 2
    for pair, (root, good, bad) in zip(pairs, [(0, 2, 3), (1, 4, 5)], strict=True):
        assert pair.prefix == nodes[root]["context"]  # the prompt
        assert pair.prefix + pair.first == nodes[good]["context"]  # through the step's tool result
        assert pair.prefix + pair.second == nodes[bad]["context"]
        assert (pair.first_value, pair.second_value) == (1.0, 0.0)
    examples = examples_from_sibling_pairs(pairs)
    assert [label for _, label in examples] == [True, False, True, False]
    assert examples[0][0] == nodes[2]["context"] and examples[1][0] == nodes[3]["context"]


class ScriptedPRM:
    """Prefers contexts whose last tool result is a number (a stand-in for a trained PRM)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def score(self, contexts):
        out = []
        for c in contexts:
            last = self.tokenizer.decode(c).split("<tool_response>")[-1]
            out.append(0.9 if last.strip().split("<")[0].strip().isdigit() else 0.1)
        return out


def test_codetool_search_follows_the_best_candidate(math_worker, tokenizer):
    from steprl.methods.codetool import search_rollout

    worker, tasks = math_worker
    worker.engine.calls = 1  # the first candidate of each step is now the failing program
    worker.__dict__.setdefault("_codetool_prms", {})["scripted"] = ScriptedPRM(tokenizer)
    trajs, stats = search_rollout(worker, [t.to_dict() for t in tasks], 2, 4, "scripted", 1.0, 0)
    assert stats["candidates"] == 8 and worker.env.num_sessions == 0
    for traj, task in zip(trajs, tasks, strict=True):
        first = traj.meta["codetool_search"][0]
        assert first["on_the_spot"] == [0.0, 1.0] and first["latent"] == pytest.approx([0.1, 0.9])
        assert first["chosen"] == 1  # on-the-spot 1 + latent 0.9 beats 0 + 0.1
        assert traj.steps[0].succ_calling == 1.0 and traj.final_answer == f"The answer is {task.answer}."
        assert traj.end_reason == "answer"


# ============================================================================ conversations


def _conversation(rewards: list[float], kinds: list[str], is_solved: float) -> Trajectory:
    """A scored episode with the given step kinds (tool / reply / final) and step rewards."""
    steps, turn = [], 0
    for r, kind in zip(rewards, kinds, strict=True):
        steps.append(
            StepRecord(text=kind, is_final=kind == "final", is_reply=kind == "reply", reward=r, turn=turn)
        )
        turn += kind == "reply"
    return Trajectory(task_id="convo", prompt_ids=[1], steps=steps, is_solved=is_solved)


def test_trice_scores_count_replies_as_answers_not_tool_steps():
    """A reply answers its user turn: it counts with IsSolved, never in the tool-step tie-break."""
    from steprl.methods.trice import trice_scores

    kinds = ["tool", "reply", "tool", "final"]  # a 2-turn conversation: call, answer, call, final answer
    right = _conversation([0.75, 1.0, 0.5, 1.0], kinds, 1.0)  # both turns answered right
    first_only = _conversation([0.5, 1.0, 0.25, 0.0], kinds, 0.0)  # turn 0 right, the final answer wrong
    good_calls = _conversation([1.0, 0.0, 1.0, 0.0], kinds, 0.0)  # better calls, both answers wrong
    cut = _conversation([1.0, 1.0], ["tool", "reply"], 0.0)  # the budget ended it after turn 0's reply
    got = trice_scores([right, first_only, good_calls, cut], 0.1)
    # by hand: IsSolved + the replies' rewards + 0.1 * mean(tool-step rewards)
    want = [
        1 + 1 + 0.1 * (0.75 + 0.5) / 2,
        0 + 1 + 0.1 * (0.5 + 0.25) / 2,
        0 + 0 + 0.1 * 1.0,
        0 + 1 + 0.1 * 1.0,
    ]
    assert got == pytest.approx([2.0625, 1.0375, 0.1, 1.1]) and got == pytest.approx(want)
    assert sorted(range(4), key=lambda i: -got[i]) == [0, 3, 1, 2]
    # reading every non-final step as a tool step (the old score) ranked the better calls above the
    # candidate that answered its first turn right: 0.1 * 2/3 > 0.1 * 1.75/3
    old = [
        t.is_solved + 0.1 * sum(s.reward for s in t.steps if not s.is_final) / 3
        for t in (first_only, good_calls)
    ]
    assert old[1] > old[0] and got[1] > got[2]
    # a single question is unchanged: IsSolved + w * mean(tool-step rewards)
    single = _conversation([0.5, 1.0, 0.5], ["tool", "tool", "final"], 0.5)
    assert trice_scores([single], 0.2) == pytest.approx([0.5 + 0.2 * 0.75])


def test_codetool_a_reply_is_an_answer_on_the_spot():
    """In a conversation the search must be able to answer a turn: a reply runs no code and scores 1,
    like the final answer, so it is not beaten by any tool call that merely ran."""
    reply = StepRecord(text="It is 5.", is_reply=True)
    assert C.on_the_spot_reward(reply) == 1.0
    assert C.on_the_spot_reward(StepRecord(text="", is_reply=True, parse_error="cut")) == 0.0
    call_ran = StepRecord(text="", succ_calling=1.0)
    spots = [C.on_the_spot_reward(s) for s in (call_ran, reply)]
    assert C.select_best(spots, [0.2, 0.6]) == 1  # totals 1.2 and 1.6: the latent reward decides
