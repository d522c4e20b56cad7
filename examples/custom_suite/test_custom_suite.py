"""Load the example suites from suite.yaml and run one episode of each through a ToolEnv.

python -m pytest examples/custom_suite -q
"""

from pathlib import Path

from tools_env import ToolCall, ToolEnv, get_suite
from tools_env.plugins import load_suite_from_yaml

HERE = Path(__file__).parent


def test_yaml_registers_both_suites():
    names = load_suite_from_yaml(HERE / "suite.yaml")
    assert set(names) == {"capitals", "units"}
    assert get_suite("capitals").name == "capitals" and get_suite("units").name == "units"
    assert load_suite_from_yaml(HERE / "suite.yaml") == names  # loading twice is harmless


def test_capitals_episode():
    load_suite_from_yaml(HERE / "suite.yaml")
    suite, env = get_suite("capitals"), ToolEnv()
    task = suite.tasks("test", 1, seed=0)[0]
    session = env.open_session(task)
    outcomes = env.call(
        session, [ToolCall("capital_of", {"country": "Brevia"}), ToolCall("remember", {"note": "x"})]
    )
    assert [o.ok for o in outcomes] == [True, True] and outcomes[0].output == "Saltmere"
    state = env.close_session(session)
    assert state == {"notes": ["x"]}
    steps = [{"calls": [o.to_dict() for o in outcomes]}]
    assert suite.contributions(task, steps, "Saltmere") == [1.0]
    assert suite.final_answer_correct(task, "The answer is Saltmere.", state) == 1.0


def test_units_episode():
    load_suite_from_yaml(HERE / "suite.yaml")
    suite, env = get_suite("units"), ToolEnv()
    task = suite.tasks("train", 1, seed=0)[0]
    session = env.open_session(task)
    (outcome,) = env.call(session, [ToolCall("convert", dict(task.meta))])
    assert outcome.ok
    assert suite.final_answer_correct(task, f"It is {outcome.output}.", env.close_session(session)) == 1.0
