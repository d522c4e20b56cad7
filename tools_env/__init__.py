"""tools_env: the sandboxed multi-turn tool environment steprl agents act in."""

from tools_env.env import ToolEnv
from tools_env.parsers import (
    GIVE_UP_ANSWER,
    PARSERS,
    ParsedTurn,
    ToolCall,
    format_observation,
    get_parser,
    register_parser,
    uses_text_observations,
)
from tools_env.sandbox import SandboxLimits, SandboxResult, run_python
from tools_env.suite import SUITES, CallOutcome, Suite, Task, get_suite, register_suite
from tools_env.tools import Tool, ToolError, tool

__all__ = [
    "CallOutcome",
    "GIVE_UP_ANSWER",
    "PARSERS",
    "ParsedTurn",
    "SUITES",
    "SandboxLimits",
    "SandboxResult",
    "Suite",
    "Task",
    "Tool",
    "ToolCall",
    "ToolEnv",
    "ToolError",
    "format_observation",
    "get_parser",
    "get_suite",
    "register_parser",
    "register_suite",
    "run_python",
    "tool",
    "uses_text_observations",
]
