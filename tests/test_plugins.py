"""User suites: YAML files, entry points, and MCP servers (a real stdio server from tests/fixtures)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tools_env import SUITES, Task, ToolCall, ToolEnv, get_suite, register_suite
from tools_env.mcp_suite import MCPSuite, close_all, get_connection
from tools_env.plugins import load_entry_points, load_suite_from_yaml

ROOT = Path(__file__).resolve().parents[1]
MCP_SERVER = str(ROOT / "tests/fixtures/mcp_server.py")


@pytest.fixture(scope="module", autouse=True)
def stop_mcp_servers():
    yield
    close_all()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_example_custom_suite_loads():
    names = load_suite_from_yaml(ROOT / "examples/custom_suite/suite.yaml")
    assert set(names) == {"capitals", "units"}
    env = ToolEnv()
    session = env.open_session(get_suite("capitals").tasks("train", 1, seed=0)[0])
    assert env.call(session, [ToolCall("capital_of", {"country": "Lumeria"})])[0].output == "Dunhold"


def test_inline_yaml_suite(tmp_path: Path):
    write(
        tmp_path / "tools.py",
        '''
        def double(x: int) -> str:
            """Double a number."""
            return str(2 * x)

        def checker(task, final_answer, state):
            return 1.0 if final_answer == task.answer else 0.0

        def start(task):
            return {"seen": []}
    ''',
    )
    write(
        tmp_path / "s.yaml",
        """
        name: yaml_double
        tool_format: pycall
        tools: [./tools.py:double]
        tasks:
          train: [{question: double 2, answer: "4"}, {question: double 3, answer: "6", level: 1}]
          test: [{question: double 5, answer: "10"}]
        checker: ./tools.py:checker
        initial_state: ./tools.py:start
    """,
    )
    assert load_suite_from_yaml(tmp_path / "s.yaml") == ["yaml_double"]
    suite = get_suite("yaml_double")
    assert suite.tool_format == "pycall" and [t.name for t in suite.tools()] == ["double"]
    train = suite.tasks("train", 5, seed=0)
    assert sorted(t.question for t in train) == ["double 2", "double 3"]
    assert next(t for t in train if t.answer == "6").meta == {"level": 1}
    assert [t.question for t in suite.tasks("test", 5, seed=0)] == ["double 5"]
    env = ToolEnv()
    session = env.open_session(train[0])
    assert env.call(session, [ToolCall("double", {"x": 21})])[0].output == "42"
    assert not env.call(session, [ToolCall("double", {"x": "21"})])[0].ok
    assert env.close_session(session) == {"seen": []}
    assert suite.final_answer_correct(train[0], train[0].answer, {}) == 1.0


def test_yaml_that_only_names_a_module(tmp_path: Path):
    write(
        tmp_path / "mine.py",
        """
        from tools_env import Suite, Task, register_suite

        @register_suite("yaml_module_suite")
        class Mine(Suite):
            def tasks(self, split, n, seed):
                return [Task(f"m{i}", "yaml_module_suite", "q", "a") for i in range(n)]

            def final_answer_correct(self, task, final_answer, state):
                return 1.0
    """,
    )
    write(tmp_path / "m.yaml", "modules: [./mine.py]\n")
    assert load_suite_from_yaml(tmp_path / "m.yaml") == ["yaml_module_suite"]
    assert load_suite_from_yaml(tmp_path / "m.yaml") == ["yaml_module_suite"]  # idempotent
    assert len(get_suite("yaml_module_suite").tasks("train", 3, 0)) == 3


def test_yaml_errors_are_clear(tmp_path: Path):
    with pytest.raises(ValueError, match="registered no suite"):
        load_suite_from_yaml(write(tmp_path / "empty.yaml", "system_prompt: hi\n"))
    with pytest.raises(ValueError, match="module:function"):
        load_suite_from_yaml(write(tmp_path / "bad.yaml", "name: yaml_bad\ntools: [nocolon]\n"))
    with pytest.raises(FileNotFoundError):
        load_suite_from_yaml(write(tmp_path / "missing.yaml", "name: yaml_missing\ntools: [./nope.py:f]\n"))


def test_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A distribution declaring [project.entry-points."steprl.suites"] is found and imported."""
    write(
        tmp_path / "ep_suite_pkg.py",
        """
        from tools_env import Suite, register_suite

        @register_suite("entry_point_suite")
        class EP(Suite):
            def tasks(self, split, n, seed):
                return []

            def final_answer_correct(self, task, final_answer, state):
                return 0.0
    """,
    )
    dist = tmp_path / "ep_suite_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-suite-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[steprl.suites]\nmine = ep_suite_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_entry_points() == ["entry_point_suite"]
    assert "entry_point_suite" in SUITES


# ---- MCP ----------------------------------------------------------------------------------------
@register_suite("_mcp_test")
class _MCPTestSuite(MCPSuite):
    server_command = sys.executable
    server_args = (MCP_SERVER,)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        return [Task(f"mcp-{split}-{i}", "_mcp_test", f"What is {i} + {i}?", str(2 * i)) for i in range(n)]

    def final_answer_correct(self, task: Task, final_answer: str | None, state: dict[str, Any]) -> float:
        return 1.0 if (final_answer or "").strip() == task.answer else 0.0


def test_mcp_server_tools_as_a_suite():
    env = ToolEnv()
    schemas = {s["function"]["name"]: s["function"] for s in env.list_tools("_mcp_test")}
    assert set(schemas) == {"add", "shout", "fail"}
    assert schemas["add"]["parameters"]["required"] == ["a", "b"]
    task = get_suite("_mcp_test").tasks("train", 3, 0)[2]
    session = env.open_session(task)
    add, shout, fail, invalid, unknown = env.call(session, [
        ToolCall("add", {"a": 2, "b": 2}), ToolCall("shout", {"text": "hi"}), ToolCall("fail", {"reason": "test"}),
        ToolCall("add", {"a": "two", "b": 2}), ToolCall("subtract", {"a": 1}),
    ])  # fmt: skip
    assert add.ok and add.output == "4" and shout.output == "HI"
    assert not fail.ok and "failed on purpose: test" in fail.output
    assert not invalid.ok and invalid.error == "invalid_arguments"  # validated against the MCP schema
    assert not unknown.ok and unknown.error == "unknown_tool"
    env.close_session(session)
    assert get_suite("_mcp_test").final_answer_correct(task, add.output, {}) == 1.0


def test_mcp_tools_from_yaml(tmp_path: Path):
    write(
        tmp_path / "mcp.yaml",
        f"""
        name: yaml_mcp
        mcp: {{command: {sys.executable}, args: [{MCP_SERVER}]}}
        tasks: {{train: [{{question: shout hi, answer: HI}}]}}
    """,
    )
    load_suite_from_yaml(tmp_path / "mcp.yaml")
    env = ToolEnv()
    session = env.open_session(get_suite("yaml_mcp").tasks("train", 1, 0)[0])
    assert env.call(session, [ToolCall("shout", {"text": "yo"})])[0].output == "YO"
    env.close_session(session)


def test_mcp_connection_is_shared_and_bad_servers_fail_clearly():
    assert get_connection(sys.executable, [MCP_SERVER]) is get_connection(sys.executable, [MCP_SERVER])
    with pytest.raises(RuntimeError, match="MCP server"):
        get_connection(sys.executable, ["-c", "import sys; sys.exit(3)"], timeout_s=10)
