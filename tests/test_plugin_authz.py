"""Who may see what, with a user limited to one DAG.

Its own primary-mode deployment (bucket ``plugin-authz``, the example DAG run once), so the
first inventory taken here is the module's first scan of that bucket. ``dag_a_editor`` may
touch DAG ``dag_a`` only (:class:`tests.per_dag_auth.PerDagAuthManager`); the example DAG is
"another DAG" to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import CountingMotoServer
from tests.test_airflow_runs import DAG_ID
from tests.test_plugin import WRITE, Deployment, _deployed

pytestmark = pytest.mark.airflow

BUCKET = "plugin-authz"
OVERVIEW = "/objstore-backend/overview"
INVENTORY = "/objstore-backend/overview/inventory"


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path, moto_server: Any, s3_client: Any
) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("plugin-authz")
    with _deployed(home, migrated_db, moto_server, s3_client, BUCKET, "AIRFLOW__STATE_STORE__BACKEND") as d:
        yield d


def _bucket_requests(moto: CountingMotoServer) -> int:
    """Requests that reached this module's bucket (path-style: ``/plugin-authz/...``)."""
    return sum(1 for _, path, _ in moto.log.snapshot() if path.split("/")[1] == BUCKET)


# -- the overview ------------------------------------------------------------------------------


def test_inventory_is_taken_on_demand_and_read_a_page_at_a_time(
    deployment: Deployment, moto_server: CountingMotoServer
) -> None:
    server = deployment.server
    assert server.call("GET", OVERVIEW, "viewer").json()["taken_at"] is None  # nothing scanned yet
    objects = len(list(deployment.backend.store.iter_objects()))  # (this listing is counted too)
    before = _bucket_requests(moto_server)
    taken = server.call("POST", INVENTORY, "viewer").json()
    scanned = _bucket_requests(moto_server)
    assert scanned > before  # this one scanned the bucket
    assert taken["inventory"]["keys"] == objects
    assert [d["dag_id"] for d in taken["dags"]] == [DAG_ID] and taken["total_dags"] == 1

    page = server.call("GET", f"{OVERVIEW}?limit=1&offset=1", "viewer").json()
    assert page["dags"] == [] and page["taken_at"] == taken["taken_at"]


def test_the_overview_needs_every_dag_whatever_the_query_names(deployment: Deployment) -> None:
    server = deployment.server
    for query in ("", "?dag_id=dag_a", f"?dag_id={DAG_ID}", "?dag_id=~"):
        for method, path in (("GET", OVERVIEW), ("POST", INVENTORY), ("GET", "/objstore-backend/ui/overview")):
            where = f"{method} {path}{query}"
            answer = server.call(method, path + query, "dag_a_editor", headers=WRITE)
            assert answer.status_code == 403, f"{where}: {answer.status_code} {answer.text[:300]}"
            assert DAG_ID not in answer.text and deployment.run_id not in answer.text, where
            assert server.call(method, path + query, "admin", headers=WRITE).status_code == 200, where

    # the grant itself works: the user reads dag_a's task instances, not the other DAG's, and a
    # query naming dag_a does not stand in for the DAG of the path
    own = "/objstore-backend/dags/dag_a/dagRuns/r/taskInstances/t/state-store"
    assert server.call("GET", own, "dag_a_editor").status_code == 200
    other = deployment.task_path("submit_job")
    assert server.call("GET", other, "dag_a_editor").status_code == 403
    assert server.call("GET", other + "?dag_id=dag_a", "dag_a_editor").status_code == 403
    assert server.call("GET", other, "viewer").status_code == 200
