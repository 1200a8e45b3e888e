#!/usr/bin/env bash
# test.sh: build l4lb and run the whole test suite (the README's test command; .ci/run calls it).
# Arguments are passed to pytest (e.g. -k maglev, -x).
set -euo pipefail
L4LB_EXTRAS=test,dev
# Real peers and tools the tests drive (installed only as root, only when missing): keepalived
# (VRRP interoperability), tcpdump (captures), chromium (status page), tmux (`l4lb top`), nginx
# and haproxy (backends that read the PROXY protocol header, and balancers in front that send
# it: nginx's stream module is libnginx-mod-stream), dnsmasq (a DNS server for kind = "udp"
# health checks).
L4LB_APT_EXTRA=${L4LB_APT_EXTRA:-"iproute2 keepalived tcpdump chromium tmux nginx haproxy libnginx-mod-stream dnsmasq-base"}
export L4LB_EXTRAS L4LB_APT_EXTRA
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$l4lb_root"
echo "test: $("$VENV_PY" -m l4lb version | tr '\n' ' ')"
echo "test: lint (ruff, mypy --strict)"
"$VENV_PY" -m ruff check .
"$VENV_PY" -m mypy
set +e
timeout --signal=INT 2400 "$VENV_PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "test: error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
