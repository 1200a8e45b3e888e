#!/usr/bin/env bash
# bootstrap.sh: install what building and testing l4lb needs, and build it into ./.venv.
#
# Sourced by scripts/demo.sh and scripts/test.sh. Installs Debian packages only when something is
# missing (and only as root; otherwise it says what to install). Creates .venv with the system's
# python3 (>= 3.11) and installs l4lb in editable mode, which compiles the C data plane in place.
# Extra pip extras can be requested with L4LB_EXTRAS (e.g. "test").
set -euo pipefail

l4lb_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$l4lb_root"

PYTHON=${PYTHON:-python3}
apt_needed=()
command -v gcc >/dev/null 2>&1 || apt_needed+=(gcc libc6-dev)
command -v ip >/dev/null 2>&1 || apt_needed+=(iproute2)
command -v "$PYTHON" >/dev/null 2>&1 || apt_needed+=(python3 python3-dev python3-venv)
if command -v "$PYTHON" >/dev/null 2>&1; then
    "$PYTHON" - <<'PY' || { echo "bootstrap: error: l4lb needs Python >= 3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
    inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$inc/Python.h" ] || apt_needed+=(python3-dev)
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_needed+=(python3-venv)
fi
if [ ${#apt_needed[@]} -gt 0 ]; then
    bash "$l4lb_root/scripts/apt-install.sh" "${apt_needed[@]}"
fi
# Optional tools (tests that need them skip, naming the package, when they are absent): installed
# only when running as root.
if [ -n "${L4LB_APT_EXTRA:-}" ] && [ "$(id -u)" = 0 ]; then
    # shellcheck disable=SC2086
    bash "$l4lb_root/scripts/apt-install.sh" $L4LB_APT_EXTRA
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv"
    "$PYTHON" -m venv .venv
fi
VENV_PY="$l4lb_root/.venv/bin/python"
"$VENV_PY" -m pip install -q --upgrade pip setuptools wheel 'Cython>=3,<4'
spec="."
[ -n "${L4LB_EXTRAS:-}" ] && spec=".[${L4LB_EXTRAS}]"
echo "bootstrap: building l4lb (C data plane) into .venv"
"$VENV_PY" -m pip install -q --no-build-isolation -e "$spec"
"$VENV_PY" -c 'import l4lb._dataplane' \
    || { echo "bootstrap: error: the C data plane did not build (see above)" >&2; exit 1; }
export VENV_PY
