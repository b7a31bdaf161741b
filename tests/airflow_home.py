"""A real Airflow 3.3 home for tests: the environment `airflow` commands run in, and a migrated DB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "examples" / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
RETENTION_DAYS = 3


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


def migrate(home: Path) -> Path:
    """`airflow db migrate` a SQLite DB in ``home``; its path."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home), check=True, capture_output=True)
    return home / "airflow.db"
