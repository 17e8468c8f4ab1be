#!/usr/bin/env bash
# Install the external tools the integration tests start: each step is skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools
mkdir -p "$TOOLS/bin"
for step in scripts/tools.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step" "$TOOLS"
done
