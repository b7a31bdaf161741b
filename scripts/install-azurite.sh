#!/usr/bin/env bash
# Azurite (Azure Blob Storage emulator, npm) into .npm-tools/, for the Azure tests and benchmarks.
# Idempotent: does nothing when the pinned version is there. Needs node and npm (apt-get install
# nodejs npm, done here when missing and running as root). Prints the azurite-blob path.
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
    if [ "$(id -u)" = 0 ]; then
        (apt-get update && apt-get install -y nodejs npm) >&2
    else
        echo "install-azurite.sh: npm is missing: apt-get install nodejs npm" >&2
        exit 1
    fi
fi
mkdir -p "$DIR"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
echo "$PWD/$BIN"
