#!/usr/bin/env bash
# Submit a steprl run to an existing Ray cluster with `ray job submit` (see docs/cluster.md).
#
#   ray start --head --port 6379 --dashboard-host 0.0.0.0     # on the head node (job server: 8265)
#   ray start --address <head-ip>:6379                         # on every other node
#   RAY_ADDRESS=http://<head-ip>:8265 bash examples/ray_job_submit.sh \
#       trainer.run_dir=/shared/runs/steptool trainer.resume=auto trainer.save_every=2 ray.placement=spread
#
# The repository is shipped to every node as the job's working directory; trainer.run_dir must be on
# storage all nodes see (checkpoints are written by every FSDP rank). With trainer.resume=auto the same
# command continues a run from its newest complete checkpoint after a crash or a preemption.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_ADDRESS
exec ray job submit --working-dir . \
    --runtime-env-json '{"excludes": ["runs", ".git", "__pycache__", "*.egg-info", ".pytest_cache"]}' -- \
    python -m steprl.main "$@"
