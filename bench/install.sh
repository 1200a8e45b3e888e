#!/usr/bin/env bash
# install.sh: install what the comparative benchmark (bench/run.py) needs; safe to run again.
#
# Debian packages: haproxy, nginx with the stream module, iperf3, wrk, iproute2 (nstat) and
# util-linux (taskset). Python: matplotlib, into the project's .venv when it exists, else into the
# python3 on PATH (or $PYTHON). Runs `apt-get update` once, and only when a package is missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

apt_pkgs=(haproxy nginx libnginx-mod-stream iperf3 wrk iproute2 util-linux)
bash "$root/scripts/apt-install.sh" "${apt_pkgs[@]}"

# The Debian nginx and haproxy packages start system services; the benchmark runs its own
# instances with private configs, so stop the packaged ones (they would hold ports 80/443).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for svc in nginx haproxy; do
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi

if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    py="$root/.venv/bin/python"
else
    py=python3
fi
if ! "$py" -c 'import matplotlib' >/dev/null 2>&1; then
    echo "bench/install.sh: installing matplotlib into $py"
    "$py" -m pip install -q matplotlib
fi
echo "bench/install.sh: ready (python: $py)"
