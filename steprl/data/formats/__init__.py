"""Readers of the data formats published with StepTool, one module per format.

* ``ppo_csv``: the step-grained PPO CSV (chat formats in ``chat_formats``);
* ``sft_json``: the SFT / RFT JSON;
* ``eto_csv``: the ETO / DPO pairs CSV;
* ``annotations``: judge reward annotations;
* ``predictions``: converted model predictions (ToolEval layout);
* ``react``: the ReAct turns inside them (``tools_env.parsers.split_react``, lenient mode);
* ``common`` / ``files``: errors, read statistics, the skip-or-raise policy, line-numbered file readers;
* ``dispatch``: ``load(path, fmt)`` / ``detect(path)``.

Every reader reports a malformed record as a ``DataFormatError`` naming the file and the 1-based line,
and can skip such records instead (``on_error``). See docs/data_formats.md.
"""

from steprl.data.formats.annotations import StepAnnotation, read_reward_annotations
from steprl.data.formats.chat_formats import CHAT_FORMATS, detect_chat_format
from steprl.data.formats.common import (
    ChatMessage,
    DataFormatError,
    OnError,
    ReadStats,
    Records,
    ToolCallRecord,
    normalize_role,
)
from steprl.data.formats.dispatch import FORMAT_NAMES, READERS, detect, load
from steprl.data.formats.eto_csv import PreferencePair, read_eto_pairs_csv
from steprl.data.formats.ppo_csv import OfflineStepTrajectory, read_steptool_ppo_csv
from steprl.data.formats.predictions import Prediction, read_predictions
from steprl.data.formats.react import FinishInfo, ReactTurn, finish_info, is_final_turn, parse_react_turn
from steprl.data.formats.sft_json import Conversation, read_rft_json, read_sft_json

__all__ = [
    "CHAT_FORMATS",
    "FORMAT_NAMES",
    "READERS",
    "ChatMessage",
    "Conversation",
    "DataFormatError",
    "FinishInfo",
    "OfflineStepTrajectory",
    "OnError",
    "Prediction",
    "PreferencePair",
    "ReactTurn",
    "ReadStats",
    "Records",
    "StepAnnotation",
    "ToolCallRecord",
    "detect",
    "detect_chat_format",
    "finish_info",
    "is_final_turn",
    "load",
    "normalize_role",
    "parse_react_turn",
    "read_eto_pairs_csv",
    "read_predictions",
    "read_reward_annotations",
    "read_rft_json",
    "read_sft_json",
    "read_steptool_ppo_csv",
]
