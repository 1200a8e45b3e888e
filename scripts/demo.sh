#!/usr/bin/env bash
# demo.sh: build l4lb and run `l4lb demo` (three local backends behind the balancer).
# Arguments are passed to `l4lb demo` (e.g. --port 9090, --duration 10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec "$l4lb_root/.venv/bin/l4lb" demo "$@"
