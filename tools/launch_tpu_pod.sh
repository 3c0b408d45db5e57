#!/usr/bin/env bash
# Launch `xmodal train` on every worker of a Cloud TPU pod slice.
#
#   TPU_NAME=my-v4-64 ZONE=us-central2-b tools/launch_tpu_pod.sh \
#       --config=configs/clip_b16.py --workdir=gs://bucket/runs/clip_b16
#
# Environment:
#   TPU_NAME   the TPU VM name (required)          ZONE     its zone (required)
#   PROJECT    GCP project (default: gcloud's)     REPO_DIR checkout on the workers (default ~/xmodal)
#   INSTALL=1  first `pip install -e .[tpu]`-style setup on every worker: jax[tpu] and xmodal
# Every worker runs the same command; JAX's distributed runtime finds the pod's coordinator
# and process ids itself (xmodal.parallel.initialize_distributed sees TPU_WORKER_HOSTNAMES),
# so no --coordinator flags are needed. Every worker's output streams back (only process 0
# prints metrics) and is kept in ~/xmodal_worker.log on its host.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-'~/xmodal'}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")

if [[ "${INSTALL:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="cd $REPO_DIR && pip install -q 'jax[tpu]' && pip install -q -e ."
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
  --command="cd $REPO_DIR && set -o pipefail && xmodal train$ARGS 2>&1 | tee ~/xmodal_worker.log"
