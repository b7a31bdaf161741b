# Sourced by the other scripts: make .venv-airflow34 hold objstore-backend[dev] on Airflow 3.4
# at the versions in constraints-airflow34.txt (the tests' second Airflow release), and put it
# first on PATH. Quick when it is already there (scripts/venv-build.sh).
source scripts/venv-build.sh
build_venv .venv-airflow34 constraints-airflow34.txt
