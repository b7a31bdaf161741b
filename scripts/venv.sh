# Sourced by the other scripts: make .venv hold objstore-backend[dev] (Airflow 3.3, s3fs,
# gcsfs, moto, pytest) at the versions in constraints-dev.txt, and put it first on PATH.
# Quick when it is already there (scripts/venv-build.sh).
source scripts/venv-build.sh
build_venv .venv constraints-dev.txt
