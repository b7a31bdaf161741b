#!/usr/bin/env bash
# The demo: install objstore-backend with Airflow 3.3 into .venv, run the example DAG with the
# backend on the embedded default (a directory under AIRFLOW_HOME: no cloud account, no
# server), list the keys it left, then let Airflow drop its expired references and run the GC,
# which reclaims the objects they pointed at. Run from anywhere: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh

export AIRFLOW_HOME="${AIRFLOW_HOME:-$PWD/.demo/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/examples/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# offload mode: values in the store, references in Airflow's DB
export AIRFLOW__WORKERS__STATE_STORE_BACKEND=objstore_backend.ObjectStoreBackend

mkdir -p "$AIRFLOW_HOME"
LOG="$AIRFLOW_HOME/demo.log"
echo "== airflow db migrate (AIRFLOW_HOME=$AIRFLOW_HOME)"
airflow db migrate > "$LOG" 2>&1 || { cat "$LOG"; exit 1; }
echo "== airflow dags test objstore_state_demo   (full log: $LOG)"
airflow dags test objstore_state_demo > "$LOG" 2>&1 || { tail -50 "$LOG"; exit 1; }
grep -o "reattached to [^ ]* on try [0-9]*" "$LOG" | head -1
grep -o "DagRun Finished: dag_id=[^,]*, .*state=[a-z]*" "$LOG" | sed 's/, logical_date.*state=/ state=/'
echo "== objstore-backend ls   (the keys in $AIRFLOW_HOME/state_store)"
objstore-backend ls
echo "== airflow state-store clean   (drops expired references from Airflow's DB; the objects stay)"
airflow state-store clean > /dev/null 2>&1
echo "== objstore-backend gc   (reclaims objects whose references Airflow dropped, here the expired heartbeat)"
objstore-backend gc --airflow-db "sqlite:///$AIRFLOW_HOME/airflow.db" --offload-grace 0
