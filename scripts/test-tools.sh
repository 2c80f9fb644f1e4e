#!/usr/bin/env bash
# Debian tools the test suite drives for real: Prometheus (promtool and the server), and chromium and
# firefox-esr for the operator page's browser tests (Playwright drives chromium, Marionette firefox;
# Playwright's own browser downloads are not used).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)  # the same page in Firefox (tests/e2e/marionette.py)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "[test-tools] installing ${need[*]} from Debian's packages"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package starts a Prometheus service where an init system runs; the tests start their own.
($SUDO systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true) >/dev/null
echo "[test-tools] ready: $(promtool --version 2>&1 | head -1); $(chromium --version 2>/dev/null | head -1); $(firefox-esr --version 2>/dev/null)"
