# Sourced by the other scripts: make .venv hold objstore-backend[dev] (Airflow 3.3, s3fs,
# gcsfs, moto, pytest) at the versions in constraints-dev.txt, and put it first on PATH.
# Quick when it is already there.
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-dev.txt -e '.[dev]'
export PATH="$PWD/.venv/bin:$PATH"
