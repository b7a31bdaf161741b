#!/usr/bin/env bash
# The test suite: installs what it needs from the system (scripts/install-test-deps.sh) and
# .venv (scripts/venv.sh) when missing, then runs pytest. The tests start the servers they need
# themselves (moto, fake-gcs-server, Azurite, PostgreSQL, Airflow's API server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
source scripts/venv.sh
exec python -m pytest "$@"
