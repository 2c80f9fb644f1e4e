#!/usr/bin/env bash
# Debian tools the benchmark drives: nginx (the fast fake upstream) and wrk (the load generator).
# Installs only what is missing and never starts nginx's system service: the benchmark runs its
# own nginx on loopback high ports with a temporary prefix.
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "[bench-setup] installing ${need[*]} from Debian's packages"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# A policy-rc.d that answers 101 keeps the package from starting nginx as a service.
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    guard=1
fi
cleanup() { if [ -n "$guard" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "[bench-setup] could not install ${need[*]}" >&2
    exit 1
fi
rm -f "$log"
echo "[bench-setup] ready: $(/usr/sbin/nginx -v 2>&1), $(wrk --version 2>&1 | head -1)"
