"""Converted model predictions (``data/model_predictions_converted/...``, the ToolEval layout): per
query the tools offered and ``answer.answer_details``, a chain of nodes whose ``tool`` nodes hold
``{name, arguments, response}``; the chain ends with the ``Finish`` call.
"""

from __future__ import annotations

import ast
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
            if isinstance(msg, str):
                try:
                    msg = ast.literal_eval(msg)
                except (ValueError, SyntaxError):
                    raise RecordError(f"{where} node {depth}: tool message is not a call") from None
            calls.append(call_from_dict(msg, f"{where} node {depth}"))
        nodes = node.get("next") or []
        depth += 1
    return calls


def _parse_prediction(qid: str, d: Any, line: int) -> Prediction:
    where = f"query {qid!r}"
    query = require(d, "query", str, where)
    answer = require(d, "answer", dict, where)
    roots = require(answer, "answer_details", list, f"{where} answer")
    return Prediction(
        query_id=qid,
        query=query,
        available_tools=list(d.get("available_tools", [])),
        method=str(answer.get("method", "")),
        total_steps=int(answer.get("total_steps", 0)),
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
