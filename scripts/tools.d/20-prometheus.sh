#!/usr/bin/env bash
# Prometheus + promtool (Debian 2.42) for the observability tests. The package starts no daemon.
set -euo pipefail
TOOLS="${1:-.tools}"
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends prometheus
# A package postinst may start the service where an init system exists; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
mkdir -p "$TOOLS/bin"
