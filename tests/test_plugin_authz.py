"""Who may see what, with a user limited to one DAG; and Airflow's own routes refused however encoded.

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


def test_inventory_is_taken_on_demand_once_and_read_a_page_at_a_time(
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

    # a second request right after (a second click, another user) gets that inventory: no rescan
    again = server.call("POST", INVENTORY, "admin").json()
    assert _bucket_requests(moto_server) == scanned
    assert again["taken_at"] == taken["taken_at"] and again["inventory"] == taken["inventory"]

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


# -- Airflow's own state-store routes, however the path is spelled --------------------------------


def _spellings(d: Deployment) -> list[tuple[str, str, Any]]:
    """(method, path, body): Airflow's state-store routes with parts of the path percent-encoded.

    Starlette routes on the decoded path: each of these reaches Airflow's handler, ``%2F`` inside
    a segment included (``state-store%2Fk`` is ``state-store/k``: the key route, key ``k``).
    """
    task = d.task_path("submit_job", api="/api/v2")
    asset = d.asset_path(api="/api/v2")
    dashed = task.replace("/state-store", "/state%2Dstore")
    return [
        ("GET", dashed, None),
        ("GET", task.replace("/state-store", "/state-stor%65"), None),
        ("GET", task.replace("/state-store", "/state%2dstore") + "/job_id", None),
        ("GET", task.replace("/taskInstances/", "/task%49nstances/"), None),
        ("GET", task.replace("/api/v2/", "/api%2Fv2/"), None),
        ("GET", dashed + "?map_index=-1&region_index=-1", None),  # Airflow 3.4's query shape
        ("PUT", dashed + "/k", {"value": "diverged"}),
        ("PUT", task + "%2Fk", {"value": "diverged"}),
        ("PATCH", task + "%2Fjob_id", {"value": "diverged"}),
        ("DELETE", dashed + "/job_id", None),
        ("DELETE", dashed, None),
        ("GET", asset.replace("/state-store", "/state%2Dstore"), None),
        ("PUT", asset + "%2Fwatermark", {"value": 0}),
        ("DELETE", asset.replace("/state-store", "/state-stor%65"), None),
    ]


def test_airflow_own_state_routes_refuse_however_the_path_is_encoded(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    job_id = backend.get(deployment.scope("submit_job"), "job_id")
    for method, path, body in _spellings(deployment):
        where = f"{method} {path}"
        refused = server.call(method, path, "admin", json=body)
        assert refused.status_code == 409, f"{where}: {refused.status_code} {refused.text[:300]}"
        assert "/objstore-backend/" in refused.json()["detail"], where
        # Airflow's own answers to whom it would refuse, with the ids it would check
        assert server.call(method, path, json=body).status_code == 401, where
        if "/dags/" in path:
            assert server.call(method, path, "dag_a_editor", json=body).status_code == 403, where
        if method != "GET":
            assert server.call(method, path, "viewer", json=body).status_code == 403, where
    assert deployment.db_rows() == 0  # nothing written to a table no task reads
    assert backend.get(deployment.scope("submit_job"), "job_id") == job_id

    # the message points at the plugin's route with the decoded ids, the key included
    detail = server.call("PUT", deployment.task_path("submit_job", api="/api/v2") + "%2Fk", "admin").json()["detail"]
    assert deployment.task_path("submit_job", "k") in detail

    # the ids are read from the decoded path: the one-DAG user is admitted on dag_a, spelled either way
    for dag in ("dag_a", "dag%5Fa"):
        path = f"/api/v2/dags/{dag}/dagRuns/r/taskInstances/t/state%2Dstore/k"
        assert server.call("PUT", path, "dag_a_editor", json={"value": 1}).status_code == 409, path
    assert deployment.db_rows() == 0
