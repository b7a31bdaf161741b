# Sourced by the other scripts: make .venv-airflow34 hold objstore-backend[dev] on Airflow 3.4
# at the versions in constraints-airflow34.txt (the tests' second Airflow release), and put it
# first on PATH. Quick when it is already there.
PYTHON=${PYTHON:-python3}
[ -x .venv-airflow34/bin/python ] || "$PYTHON" -m venv .venv-airflow34
.venv-airflow34/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-airflow34.txt -e '.[dev]'
export PATH="$PWD/.venv-airflow34/bin:$PATH"
