"""Converted model predictions (``data/model_predictions_converted/...``, the ToolEval layout): per
query the tools offered and ``answer.answer_details``, a chain of nodes whose ``tool`` nodes hold
``{name, arguments, response}``; the chain ends with the ``Finish`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steprl.data.formats.common import (
    Collector,
    OnError,
    RecordError,
    Records,
    ToolCallRecord,
    call_from_dict,
    call_from_literal,
    require,
)
from steprl.data.formats.files import iter_json_entries
from steprl.data.formats.react import FinishInfo, finish_of_arguments
from tools_env.parsers import REACT_FINISH


@dataclass
class Prediction:
    """One converted model prediction: the query, the tools offered and the linear chain of calls."""

    query_id: str
    query: str
    available_tools: list[dict[str, Any]]
    method: str
    total_steps: int
    final_answer: str  # stored text: a JSON object with return_type / final_answer
    calls: list[ToolCallRecord]
    source_line: int = 0

    def finish(self) -> FinishInfo | None:
        """How the episode ended, from its last call if that call is ``Finish``."""
        if not self.calls or self.calls[-1].name.strip().lower() != REACT_FINISH.lower():
            return None
        return finish_of_arguments(self.calls[-1].arguments)


def _chain_calls(roots: list[Any], where: str) -> list[ToolCallRecord]:
    """Walk the answer_details tree; only linear chains (one child per node) are supported."""
    calls, nodes, depth = [], roots, 0
    while nodes:
        if len(nodes) != 1:
            raise RecordError(f"{where}: answer_details branches ({len(nodes)} children at depth {depth})")
        node = nodes[0]
        role = require(node, "role", str, f"{where} node {depth}")
        if role == "tool":
            msg = node.get("message")
            at = f"{where} node {depth}"
            calls.append(call_from_literal(msg, at) if isinstance(msg, str) else call_from_dict(msg, at))
        nodes = node.get("next") or []
        if not isinstance(nodes, list):
            raise RecordError(f"{where} node {depth}: 'next' is a {type(nodes).__name__}, expected a list")
        depth += 1
    return calls


def _parse_prediction(qid: str, d: Any, line: int) -> Prediction:
    where = f"query {qid!r}"
    query = require(d, "query", str, where)
    answer = require(d, "answer", dict, where)
    roots = require(answer, "answer_details", list, f"{where} answer")
    tools = d.get("available_tools", [])
    if not isinstance(tools, list):
        raise RecordError(f"{where} available_tools is a {type(tools).__name__}, expected a list")
    total = answer.get("total_steps", 0)
    if isinstance(total, bool) or not isinstance(total, int):
        raise RecordError(f"{where} answer total_steps is a {type(total).__name__}, expected an integer")
    return Prediction(
        query_id=qid,
        query=query,
        available_tools=list(tools),
        method=str(answer.get("method", "")),
        total_steps=total,
        final_answer=str(answer.get("final_answer", "")),
        calls=_chain_calls(roots, where),
        source_line=line,
    )


def read_predictions(path: str | Path, on_error: OnError = "skip") -> Records[Prediction]:
    """Read converted model predictions (``data/model_predictions_converted/...``, ToolEval layout):
    per query the tools offered and ``answer.answer_details``, a chain of nodes whose ``tool`` nodes
    hold ``{name, arguments, response}``; the chain ends with the ``Finish`` call."""
    out: Collector[Prediction] = Collector(path, on_error)
    for qid, entry, line in iter_json_entries(path):
        out.run(line, lambda q=qid, e=entry, ln=line: _parse_prediction(q, e, ln))
    return out.out
