#!/usr/bin/env bash
# One entry point for the main job (python -m resnet_jax.main), here or on a Cloud TPU VM pod.
#   ./launch.sh [--dry-run] local CONFIG WORKDIR [FLAG]...
#       this machine, every local accelerator; the interpreter is $PYTHON (default python3).
#   ./launch.sh [--dry-run] tpu-vm [--no-setup] [--project=P] TPU ZONE CONFIG gs://B/DIR [FLAG]...
#       every worker of a Cloud TPU VM at once, with --multihost; first copies this checkout to
#       ~/resnet_jax on each worker and installs it there, unless --no-setup.
#   --dry-run prints the commands (shell-quoted, one per line) and runs nothing; --help for more.
# FLAGs reach resnet_jax.main exactly as given, also through the remote shell.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
remote_dir=resnet_jax  # On each worker, in the home directory.

usage() {
  cat <<'EOF'
Usage: ./launch.sh [OPTIONS] MODE [OPTIONS] ARGS... [FLAG ...]

Runs the main job, python -m resnet_jax.main, on this machine or on every worker of a Cloud TPU VM.

Modes:
  local CONFIG WORKDIR [FLAG ...]
      Run from the repository root on this machine, with every local accelerator:
        $PYTHON -m resnet_jax.main --config=CONFIG --workdir=WORKDIR FLAG ...
      PYTHON defaults to python3 (point it at a virtual environment's python).

  tpu-vm [--no-setup] [--project=PROJECT] TPU_NAME ZONE CONFIG gs://BUCKET/WORKDIR [FLAG ...]
      Run on all workers of a Cloud TPU VM (a pod slice) at once, with --multihost, through
      'gcloud compute tpus tpu-vm ssh --worker=all'. First (unless --no-setup) replaces
      ~/resnet_jax on every worker with a copy of this checkout (its non-hidden top-level
      entries, except build, dist, *.egg-info and virtual environments) and installs it there
      with pip install -e . 'jax[tpu]'. CONFIG is a path relative to the repository root.
      WORKDIR must start with gs:// (storage all workers share). The workers share one XLA
      compilation cache, gs://BUCKET/xla_cache, so that a restart loads the compiled steps on
      every host (JAX writes entries from host 0 only), unless a FLAG sets
      --config.compilation_cache_dir.

Options (before MODE or right after it):
  -n, --dry-run        print the commands, shell-quoted, one per line, and run nothing
  --no-setup           tpu-vm: skip the copy and install (the workers' copy is current)
  --project=PROJECT    tpu-vm: the Google Cloud project, passed to gcloud
  -h, --help           print this help and exit
  --                   end of options

FLAG: any flag of resnet_jax.main, such as --config.model.name=resnet50 or --mode=eval.
Each argument reaches python exactly as given, spaces, quotes and $ included.

Examples:
  ./launch.sh local experiments/configs/cifar10_resnet20.py /tmp/c10 --config.num_epochs=1
  ./launch.sh --dry-run tpu-vm my-v4-32 us-central2-b experiments/configs/imagenet_resnet50.py \
      gs://my-bucket/r50
  ./launch.sh tpu-vm --no-setup --project=my-project my-v4-32 us-central2-b \
      experiments/configs/imagenet_resnet50.py gs://my-bucket/r50 --mode=eval
EOF
}

bad_usage() {
  echo "launch.sh: $1" >&2
  echo >&2
  usage >&2
  exit 2
}

# One word for a POSIX shell: as it is when it holds only safe characters, else single-quoted.
quote() {
  if [[ -n $1 && $1 != *[!A-Za-z0-9_./:=@%+,-]* ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The command as one line a shell parses back into the same words.
quote_all() {
  local line='' word
  for word in "$@"; do
    line+="${line:+ }$(quote "$word")"
  done
  printf '%s\n' "$line"
}

dry_run=0
setup=1
project=''

# Reads options from the front of "$@"; sets `consumed` to how many words they took.
parse_options() {
  consumed=0
  while (($#)); do
    case $1 in
      -n | --dry-run) dry_run=1 ;;
      -h | --help) usage; exit 0 ;;
      --no-setup) setup=0 ;;
      --project=*) project=${1#--project=} ;;
      --project)
        (($# >= 2)) || bad_usage '--project needs a value'
        project=$2; shift; consumed=$((consumed + 1)) ;;
      --) consumed=$((consumed + 1)); return ;;
      -*) bad_usage "unknown option: $1" ;;
      *) return ;;
    esac
    shift; consumed=$((consumed + 1))
  done
}

# Runs a command, or with --dry-run prints it.
run() {
  if ((dry_run)); then quote_all "$@"; else "$@"; fi
}

parse_options "$@"; shift "$consumed"
(($# >= 1)) || bad_usage 'no MODE given'
mode=$1; shift
case $mode in local | tpu-vm) ;; *) bad_usage "unknown MODE '$mode' (valid: local, tpu-vm)" ;; esac
parse_options "$@"; shift "$consumed"

case $mode in
  local)
    (($# >= 2)) || bad_usage 'local needs CONFIG and WORKDIR'
    if ((!setup)) || [[ -n $project ]]; then bad_usage '--no-setup and --project are for tpu-vm'; fi
    config=$1; workdir=$2; shift 2
    python=${PYTHON:-python3}
    run cd "$here"
    if ((dry_run)); then
      quote_all "$python" -m resnet_jax.main --config="$config" --workdir="$workdir" "$@"
    else
      exec "$python" -m resnet_jax.main --config="$config" --workdir="$workdir" "$@"
    fi
    ;;

  tpu-vm)
    (($# >= 4)) || bad_usage 'tpu-vm needs TPU_NAME, ZONE, CONFIG and WORKDIR'
    tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
    [[ -n $tpu && -n $zone && -n $config ]] || bad_usage 'TPU_NAME, ZONE and CONFIG must be given'
    if [[ $workdir != gs://?* ]]; then
      echo "launch.sh: WORKDIR '$workdir' is not valid for tpu-vm: every worker writes to it," \
        'so it must be a Cloud Storage path, gs://BUCKET/DIR' >&2
      exit 2
    fi
    config=${config#"$here"/}  # The workers see the checkout at another path.
    bucket=${workdir#gs://}
    bucket=${bucket%%/*}
    gcloud_flags=(--zone="$zone" --worker=all)
    if [[ -n $project ]]; then gcloud_flags+=(--project="$project"); fi

    if ((setup)); then
      sources=()
      for entry in "$here"/*; do
        case ${entry##*/} in build | dist | *.egg-info) continue ;; esac
        [[ -e $entry/pyvenv.cfg ]] && continue  # A virtual environment.
        sources+=("$entry")
      done
      run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
        --command="rm -rf ~/$remote_dir && mkdir -p ~/$remote_dir"
      run gcloud compute tpus tpu-vm scp --recurse "${sources[@]}" "$tpu:$remote_dir" \
        "${gcloud_flags[@]}"
      run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
        --command="cd ~/$remote_dir && python3 -m pip install -q -e . 'jax[tpu]'"
    fi
    cache=("--config.compilation_cache_dir=gs://$bucket/xla_cache")
    for arg in "$@"; do
      if [[ $arg == --config.compilation_cache_dir=* ]]; then cache=(); fi
    done
    main_command=$(quote_all python3 -m resnet_jax.main --multihost --config="$config" \
      --workdir="$workdir" "${cache[@]}" "$@")
    run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
      --command="cd ~/$remote_dir && $main_command"
    ;;
esac
