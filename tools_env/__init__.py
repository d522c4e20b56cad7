"""tools_env: the sandboxed multi-turn tool environment steprl agents act in."""

from tools_env.env import ToolEnv
from tools_env.parsers import PARSERS, ParsedTurn, ToolCall, get_parser, register_parser
from tools_env.suite import SUITES, CallOutcome, Suite, Task, get_suite, register_suite
from tools_env.tools import Tool, ToolError, tool

__all__ = [
    "PARSERS", "SUITES", "CallOutcome", "ParsedTurn", "Suite", "Task", "Tool", "ToolCall", "ToolEnv",
    "ToolError", "get_parser", "get_suite", "register_parser", "register_suite", "tool",
]
