#!/usr/bin/env bash
# The test suite on both supported Airflow releases: installs what it needs from the system
# (scripts/install-test-deps.sh), .venv (Airflow 3.3, scripts/venv.sh) and .venv-airflow34 (3.4,
# scripts/venv-airflow34.sh) when missing, then runs pytest twice at once: everything but what is
# marked beside on 3.3, and what is marked airflow_bound or beside on 3.4 (beside: tests that do not
# depend on the release, run once where they even out the two runs' time; each run keeps to about
# one core: side by side they fit CI's time; the 3.4 run's output follows the 3.3 run's). The tests start the servers they need themselves (moto,
# fake-gcs-server, Azurite, PostgreSQL, Airflow's API server). Arguments go to both runs (a
# `-m EXPR` narrows both runs by EXPR); with arguments, a run that selects
# nothing on its release passes. Fails if either run fails; the last line is pytest's summary of the
# failing run (of the 3.4 run when both pass).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
source scripts/venv.sh
source scripts/venv-airflow34.sh

args=() only="" # only: the caller's -m expression
while [ $# -gt 0 ]; do
  case $1 in
    -m) only=${2:?-m needs an expression}; shift 2 ;;
    -m*) only=${1#-m}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
main=(-m "not beside${only:+ and ($only)}")
bound=(-m "(airflow_bound or beside)${only:+ and ($only)}")
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# run RELEASE VENV PYTEST_ARGS...: pytest on VENV's Airflow, its output also kept in $logs/RELEASE
run() {
  local release=$1 venv=$2 status=0
  shift 2
  echo "=== Airflow $release: python -m pytest $*"
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest "$@" 2>&1 | tee "$logs/$release" || status=$?
  [ "$status" = 5 ] && [ ${#args[@]} -gt 0 -o -n "$only" ] && status=0 # nothing selected, by the caller's choice
  return "$status"
}

status_33=0 status_34=0
run 3.4 .venv-airflow34 "${args[@]}" "${bound[@]}" > /dev/null &
pid_34=$!
run 3.3 .venv "${args[@]}" "${main[@]}" || status_33=$?
wait "$pid_34" || status_34=$?
echo "=== Airflow 3.4: python -m pytest ${args[*]} ${bound[*]} (ran beside the 3.3 run)"
cat "$logs/3.4"
if [ "$status_33" != 0 ] && [ "$status_34" = 0 ]; then
  echo "=== the Airflow 3.3 run failed (exit $status_33):"
  tail -n 1 "$logs/3.3"
fi
[ "$status_33" = 0 ] && [ "$status_34" = 0 ]
