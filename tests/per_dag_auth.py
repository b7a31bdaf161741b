"""An auth manager for tests that need a user who may touch some DAGs and not others.

SimpleAuthManager gives each user one role over every DAG. :class:`PerDagAuthManager` keeps its
users, roles, passwords and login page, and narrows the DAG access of the users named in
``[per_dag_auth_manager] grants`` (JSON, user name -> list of DAG ids) to those DAGs: asked
about another DAG, or about no DAG in particular (``DagDetails.id`` None, what Airflow asks for
routes about every DAG, such as ``/api/v2/dags/~/dagRuns``), it says no. Within their DAGs the
role still decides the method. Users not named, and every other resource, get SimpleAuthManager's
answers. Airflow's listings filter through ``is_authorized_dag`` too, so they show a granted user
only their DAGs.

Configure it like any auth manager (the API server imports it, so ``tests`` must be on its
``PYTHONPATH``): :func:`tests.airflow_api.auth_settings` does, with :data:`tests.airflow_api.DAG_GRANTS`.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.configuration import conf

__all__ = ["CLASS_PATH", "PerDagAuthManager", "grants_setting"]

#: ``[core] auth_manager`` for this class.
CLASS_PATH = f"{__name__}.PerDagAuthManager"
_SECTION, _OPTION = "per_dag_auth_manager", "grants"


def grants_setting(grants: dict[str, list[str]]) -> dict[str, str]:
    """The environment variable that grants each user in ``grants`` only its listed DAGs."""
    return {f"AIRFLOW__{_SECTION.upper()}__{_OPTION.upper()}": json.dumps(grants)}


class PerDagAuthManager(SimpleAuthManager):
    """SimpleAuthManager, with some users' DAG access narrowed to the DAGs granted them."""

    @cached_property
    def grants(self) -> dict[str, frozenset[str]]:
        raw = conf.get(_SECTION, _OPTION, fallback="{}")
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"[{_SECTION}] {_OPTION} must be JSON (user -> list of DAG ids), got {raw!r}") from exc
        return {user: frozenset(dag_ids) for user, dag_ids in parsed.items()}

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        granted = self.grants.get(user.username)
        if granted is not None and (details is None or details.id not in granted):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
