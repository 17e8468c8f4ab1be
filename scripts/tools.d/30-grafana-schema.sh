#!/usr/bin/env bash
# @grafana/schema + typescript (npm) to type-check the Grafana dashboard with tsc.
set -euo pipefail
TOOLS="${1:-.tools}"
DIR="$TOOLS/npm"
GRAFANA_SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=7.0.2
if [ -x "$DIR/node_modules/.bin/tsc" ] && [ -f "$DIR/node_modules/@grafana/schema/package.json" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
  else
    echo "npm is missing: install Node.js and npm (apt-get install -y nodejs npm)" >&2
    exit 1
  fi
fi
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"name": "kubetune-tools", "private": true}' > "$DIR/package.json"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
  "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION"
