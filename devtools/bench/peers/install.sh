#!/usr/bin/env bash
# Installs the peer gateway tollgate-bench compares against (Portkey's
# open-source gateway, npm @portkey-ai/gateway) into devtools/bench/peers/node_modules,
# which is gitignored; `tollgate-bench --peer-portkey` (auto) finds it there.
# Needs Node.js >= 18 and npm. Pinned so figures compare across runs;
# PORTKEY_VERSION=latest (or another version) overrides.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${PORTKEY_VERSION:-1.15.2}"
command -v npm >/dev/null || { echo "install.sh: npm not found (install Node.js >= 18)" >&2; exit 1; }
npm install --prefix "$here" --no-save --no-audit --no-fund --loglevel=error \
  "@portkey-ai/gateway@${version}"
entry="$here/node_modules/@portkey-ai/gateway/build/start-server.js"
[ -f "$entry" ] || { echo "install.sh: $entry missing after npm install" >&2; exit 1; }
echo "Portkey gateway ${version} installed: node $entry --port=N"
