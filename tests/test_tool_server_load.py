"""A quick version of benchmarks/tool_server_load.py: concurrent sessions against a real server process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tools_env.server import serve

_spec = importlib.util.spec_from_file_location(
    "tool_server_load", Path(__file__).resolve().parents[1] / "benchmarks/tool_server_load.py"
)
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)


def test_concurrent_sessions_without_errors():
    with serve(token="load-test", background="process") as server:
        report = load.run_load(server.url, "load-test", sessions=16, calls=10, max_seconds=30)
    print(report)
    assert report["errors"] == 0, report["first_error"]
    assert report["calls"] == 160 and report["calls_per_s"] > 0
