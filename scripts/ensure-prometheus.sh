#!/usr/bin/env bash
# Installs Debian's prometheus server when it is not on PATH (the metrics tests start one of their own); the
# package's own service is never started.
set -euo pipefail
command -v prometheus >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "prometheus is not installed: run as root, or apt-get install prometheus" >&2
    exit 1
fi
# no daemon from the package's scripts: tests run their own server on a port of their own
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
fi
trap '[ "$created" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends prometheus </dev/null >/dev/null
prometheus --version | head -1
