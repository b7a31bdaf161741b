#!/usr/bin/env bash
# Azurite (Azure Blob Storage emulator, npm) into .npm-tools/, for the Azure tests and benchmarks.
# Idempotent: does nothing when the pinned version is there. Needs node and npm (installed by
# scripts/install-test-deps.sh). Prints the azurite-blob path.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.35.0
DIR=.npm-tools
BIN="$DIR/node_modules/.bin/azurite-blob"
if [ -x "$BIN" ] && grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/azurite/package.json" 2>/dev/null; then
    echo "$PWD/$BIN"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "install-azurite.sh: npm is missing: bash scripts/install-test-deps.sh installs it" >&2
    exit 1
fi
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
echo "$PWD/$BIN"
