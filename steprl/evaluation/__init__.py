"""Evaluation: metrics (pure functions), the DFSDT decoder, the evaluation runner, comparisons and tables.

The command line is ``python -m steprl.eval`` (see docs/evaluation.md).
"""

from steprl.evaluation.dfsdt import DFSDTConfig, answer_verdict, run_dfsdt
from steprl.evaluation.metrics import aggregate, pass_rate, success_by_step_index, win_rate

__all__ = [
    "DFSDTConfig",
    "aggregate",
    "answer_verdict",
    "pass_rate",
    "run_dfsdt",
    "success_by_step_index",
    "win_rate",
]
