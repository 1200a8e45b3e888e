#!/usr/bin/env bash
# demo.sh: build l4lb and run `l4lb demo` (three local backends behind the balancer).
# Arguments are passed to `l4lb demo` (e.g. --port 9090, --duration 10).
set -euo pipefail
# curl and nc are what the demo tells you to try; as root they are installed when missing.
if [ "$(id -u)" = 0 ]; then
    missing=""
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
    command -v nc >/dev/null 2>&1 || missing="$missing netcat-openbsd"
    export L4LB_APT_EXTRA="${L4LB_APT_EXTRA:-}$missing"
fi
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec "$l4lb_root/.venv/bin/l4lb" demo "$@"
