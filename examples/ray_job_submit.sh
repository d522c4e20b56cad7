#!/usr/bin/env bash
# Submit a steprl run to an existing Ray cluster (multi-node: the controller joins the cluster
# through RAY_ADDRESS; workers are placed by Ray on any node with free resources).
#
#   ray start --head --port 6379                          # on the head node
#   ray start --address <head-ip>:6379                    # on every other node
#   RAY_ADDRESS=http://<head-ip>:8265 bash examples/ray_job_submit.sh trainer.total_iterations=20
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_ADDRESS
exec ray job submit --working-dir . --runtime-env-json '{"excludes": ["runs", ".git"]}' -- \
    python -m steprl.main "$@"
