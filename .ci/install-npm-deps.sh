#!/usr/bin/env bash
# Install the npm signers the end-to-end signing tests use (sigstore-js's `sigstore` CLI and the
# offline Sigstore instance @sigstore/mock) from tests/e2e/npm/package-lock.json, exactly as locked.
# Installs Node.js and npm from Debian first when they are missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y nodejs npm
fi

major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old for @sigstore/cli: 20 or newer is needed" >&2
  exit 1
fi

cd tests/e2e/npm
# Already installed from this very lockfile (its hash noted after the last `npm ci`): keep it;
# `npm ci` would delete node_modules and fetch every package again.
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.trustyard-lock-sha256 2>/dev/null)" != "$lock_hash" ] \
  || [ ! -x node_modules/.bin/sigstore ]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > node_modules/.trustyard-lock-sha256
fi
test -x node_modules/.bin/sigstore || { echo "sigstore CLI missing after npm ci" >&2; exit 1; }
echo "npm signers installed: $(node -p 'Object.keys(require("./package.json").dependencies).join(" ")')"
