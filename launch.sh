#!/usr/bin/env bash
# One entry point for the main job.
#   ./launch.sh local CONFIG WORKDIR [--config.a.b=V ...]
#       this machine, every local accelerator (JAX uses all visible GPUs/TPU chips).
#   ./launch.sh tpu-setup TPU_NAME ZONE
#       copy this checkout to every worker of a Cloud TPU VM (pod slice) and install it there.
#   ./launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=V ...]
#       run on every worker at once; WORKDIR must be storage all workers share (gs://bucket/dir).
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
mode=$1; shift
here=$(cd "$(dirname "$0")" && pwd)

case "$mode" in
  local)
    [ $# -ge 2 ] || usage
    config=$1; workdir=$2; shift 2
    cd "$here"
    exec python -m resnet_jax.main --config="$config" --workdir="$workdir" "$@"
    ;;
  tpu-setup)
    [ $# -eq 2 ] || usage
    tpu=$1; zone=$2
    gcloud compute tpus tpu-vm scp --recurse "$here" "$tpu":~/resnet_jax --zone="$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
      --command="cd ~/resnet_jax && python3 -m pip install -q -e . 'jax[tpu]'"
    ;;
  tpu)
    [ $# -ge 4 ] || usage
    tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
    case "$workdir" in
      gs://*) ;;
      *) echo "launch.sh: WORKDIR '$workdir' must be shared by all workers (gs://bucket/dir)" >&2; exit 2 ;;
    esac
    args=$(printf ' %q' "$@")
    gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
      --command="cd ~/resnet_jax && python3 -m resnet_jax.main --multihost --config=$config --workdir=$workdir$args"
    ;;
  *) usage ;;
esac
