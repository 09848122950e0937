#!/usr/bin/env bash
# Runs on every worker of a TPU VM slice, copied to ~/bertgpt/ by `python -m launch.tpu setup`.
#
#   setup WHEEL [PYTHON]   install WHEEL[tpu,gcs] into ~/bertgpt/venv (PYTHON: e.g. 3.11, via uv)
#   mount BUCKET           mount gs://BUCKET at /gcs/BUCKET with Cloud Storage FUSE (installed
#                          from Google's apt repository if missing)
#   versions               one line: this host and a hash of every installed version
#   start ARGS...          `bertgpt train ARGS...` detached from the SSH session; log in
#                          ~/bertgpt/logs/train.log, pid in ~/bertgpt/train.pid, exit code in
#                          ~/bertgpt/exit_code when it ends
#   status                 absent | idle | running | exited CODE
#   stop [--kill]          SIGTERM to `bertgpt train`: it saves a checkpoint and exits
#                          (--kill: SIGKILL, for a process stuck after another worker failed)
set -euo pipefail

HOME_DIR="${BERTGPT_HOME:-$HOME/bertgpt}"
VENV="$HOME_DIR/venv"
command="${1:?usage: tpu_worker.sh setup|versions|start|status|stop ...}"
shift

case "$command" in
  setup)
    wheel="${1:?setup needs the wheel path}"
    python="${2:-3.11}"
    # TPU VM images ship an older system Python; uv brings the one this package needs.
    python3 -m pip install --user --quiet --upgrade uv
    "$HOME/.local/bin/uv" venv --quiet --allow-existing --python "$python" "$VENV"
    "$HOME/.local/bin/uv" pip install --quiet --python "$VENV/bin/python" \
      "bertgpt-jax[tpu,gcs] @ file://$(realpath "$wheel")"
    ;;
  mount)
    bucket="${1:?mount needs a bucket name}"
    if ! command -v gcsfuse >/dev/null; then
      echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
        sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
    fi
    sudo mkdir -p "/gcs/$bucket"
    sudo chown "$(id -u):$(id -g)" "/gcs/$bucket"
    # `prepare --output` (and `export --output`) under the mount finish by renaming a directory,
    # which gcsfuse refuses on a flat bucket unless it holds fewer objects than
    # --rename-dir-limit (default 0); a store or an export holds a handful.
    mountpoint -q "/gcs/$bucket" ||
      gcsfuse --implicit-dirs --rename-dir-limit=200000 "$bucket" "/gcs/$bucket"
    ;;
  versions)
    echo "$(hostname) $("$HOME/.local/bin/uv" pip freeze --python "$VENV/bin/python" | sha256sum | cut -c1-16)"
    ;;
  start)
    if [[ -f "$HOME_DIR/train.pid" ]] && kill -0 "$(cat "$HOME_DIR/train.pid")" 2>/dev/null; then
      echo "$(hostname): bertgpt train is already running" >&2
      exit 1
    fi
    mkdir -p "$HOME_DIR/logs"
    rm -f "$HOME_DIR/exit_code"
    setsid nohup bash "$0" _run "$@" >/dev/null 2>&1 </dev/null &
    ;;
  _run)
    "$VENV/bin/bertgpt" train "$@" >>"$HOME_DIR/logs/train.log" 2>&1 &
    echo $! >"$HOME_DIR/train.pid"
    code=0
    wait $! || code=$?
    echo "$code" >"$HOME_DIR/exit_code"
    ;;
  status)
    if [[ ! -x "$VENV/bin/bertgpt" ]]; then
      echo "$(hostname) absent"
    elif [[ -f "$HOME_DIR/exit_code" ]]; then
      echo "$(hostname) exited $(cat "$HOME_DIR/exit_code")"
    elif [[ -f "$HOME_DIR/train.pid" ]] && kill -0 "$(cat "$HOME_DIR/train.pid")" 2>/dev/null; then
      echo "$(hostname) running"
    else
      echo "$(hostname) idle"
    fi
    ;;
  stop)
    signal=TERM
    [[ "${1:-}" == "--kill" ]] && signal=KILL
    if [[ -f "$HOME_DIR/train.pid" ]]; then
      kill -s "$signal" "$(cat "$HOME_DIR/train.pid")" 2>/dev/null || true
    fi
    ;;
  *)
    echo "tpu_worker.sh: unknown command $command" >&2
    exit 2
    ;;
esac
