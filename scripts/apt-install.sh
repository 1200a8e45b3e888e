#!/usr/bin/env bash
# apt-install.sh: install Debian packages (given as arguments) without starting their services.
#
# keepalived, nginx and haproxy start a system service on install on a normal Debian host; a
# stray keepalived would send VRRP adverts on real interfaces. A temporary policy-rc.d (exit 101)
# forbids every service start during the install; an existing policy-rc.d is left as it is.
# Runs `apt-get update` once per invocation, only when something is missing. Needs root.
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "apt-install: error: missing Debian packages: ${missing[*]} (run as root, or:" \
         "sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    added_policy=1
fi
trap '[ "$added_policy" = 1 ] && rm -f "$policy"' EXIT
echo "apt-install: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
