#!/usr/bin/env bash
# The test suite: installs .venv if needed, then runs pytest. The tests start the servers they
# need themselves (moto's S3 server) and run the example DAG in real Airflow (`dags test`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec python -m pytest "$@"
