#!/usr/bin/env bash
# What the test suite needs from the system beyond .venv, as Debian packages: chromium (the
# plugin's browser test), python3 and util-linux (tests/test_image.py runs the CronJobs' commands
# with Debian's /usr/bin/python3, unshare and setpriv), postgresql (a real metadata DB for
# Airflow), nodejs and npm (Azurite, which scripts/install-azurite.sh then puts in .npm-tools/),
# prometheus (its promtool and a real server check terraform-example/monitoring/).
# Quick and quiet when all is there; apt-get (one update) only for what is missing, as root; any
# other user gets the command to run. --check installs nothing: it lists what is missing and
# exits 1 if anything is. ROOT (default /) is where the files are looked for.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-}
CHECK=
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: bash scripts/install-test-deps.sh [--check]" >&2; exit 2 ;;
esac

has() { command -v "$1" >/dev/null; }
postgresql_installed() {
  local pg_ctl
  for pg_ctl in "$ROOT"/usr/lib/postgresql/*/bin/pg_ctl; do
    [ -x "$pg_ctl" ] && return 0
  done
  has pg_ctl
}

missing=()
[ -x "$ROOT/usr/bin/chromium" ] || missing+=(chromium)
[ -x "$ROOT/usr/bin/python3" ] || missing+=(python3)
{ has unshare && has setpriv; } || missing+=(util-linux)
postgresql_installed || missing+=(postgresql)
{ has node && has npm; } || missing+=(nodejs npm)
{ has prometheus && has promtool; } || missing+=(prometheus)

if [ ${#missing[@]} -gt 0 ]; then
  sudo=
  [ "$EUID" = 0 ] || ! has sudo || sudo="sudo "
  command="${sudo}apt-get update && ${sudo}apt-get install -y ${missing[*]}"
  if [ -n "$CHECK" ]; then
    echo "missing: ${missing[*]}"
    echo "install with: $command"
    exit 1
  fi
  if [ "$EUID" != 0 ] || ! has apt-get; then
    echo "install-test-deps.sh: the tests need these Debian packages: ${missing[*]}" >&2
    echo "install them (as root) with: $command" >&2
    exit 1
  fi
  echo "install-test-deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update && apt-get install -y "${missing[@]}"; } >&2
fi
[ -n "$CHECK" ] || bash scripts/install-azurite.sh >/dev/null
