"""A real Airflow home for tests: the environment `airflow` commands run in, and a migrated DB.

The tests run on the venv's Airflow (3.3, or 3.4 in .venv-airflow34); :func:`airflow_of` finds
the `airflow` command of a given release for tests that read both releases' DBs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "examples" / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
RETENTION_DAYS = 3
#: Each Airflow release's venv in the repo, and the script that builds it.
RELEASE_VENVS = {"3.3": (".venv", "scripts/venv.sh"), "3.4": (".venv-airflow34", "scripts/venv-airflow34.sh")}

#: The column of a task instance's or task state row's (map) index, per release: 3.4 renamed it.
INDEX_COLUMN = {"3.3": "map_index", "3.4": "region_index"}


def running_release() -> str:
    """The Airflow release (major.minor) this interpreter imports."""
    return ".".join(version("apache-airflow-core").split(".")[:2])


def airflow_of(release: str) -> str:
    """The `airflow` command of Airflow ``release``: this venv's when it runs that release, else
    the repo venv's (built by its script when missing)."""
    if running_release() == release:
        return AIRFLOW
    venv, script = RELEASE_VENVS[release]
    command = REPO / venv / "bin" / "airflow"
    if not command.exists():
        subprocess.run(["bash", "-c", f"source {script}"], cwd=REPO, check=True, capture_output=True)
    return str(command)


def airflow_env(home: Path, **config: str) -> dict[str, str]:
    """This process's environment without its Airflow settings, pointed at ``home``, plus ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS=str(RETENTION_DAYS),
        **config,
    )
    return env


def migrate(home: Path, airflow: str = AIRFLOW, *flags: str) -> Path:
    """`airflow db migrate` a SQLite DB in ``home`` (with ``airflow``, this venv's by default); its path."""
    subprocess.run([airflow, "db", "migrate", *flags], env=airflow_env(home), check=True, capture_output=True)
    return home / "airflow.db"
