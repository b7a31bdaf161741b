"""The Airflow plugin against a real ``airflow api-server`` and a real headless Chromium.

One deployment for the module: moto's S3 server, the backend in primary mode, the example
DAG run once by ``airflow dags test`` (state written by real tasks), and an API server with
the users of :mod:`tests.airflow_api` (an admin and a viewer here). The overview, and a user
limited to one DAG, are in ``test_plugin_authz``. Everything is checked over real HTTP: Airflow's
auth on every route, cross-site write refusal, the values against ``backend.get``, hostile
input, Airflow's own state-store routes refusing, and the task instance tab in a browser.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import pytest

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import encode_segment, object_path, scope_prefix
from objstore_backend.store import ObjectMetadata
from tests.airflow_api import ApiServer, auth_settings
from tests.airflow_home import airflow_env, running_release
from tests.test_airflow_runs import BACKEND, DAG_ID, run_demo

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("OBJSTORE_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _segment(key: str) -> str:
    """A key as one URL path segment; dots encoded too, or clients resolve "." and ".." away."""
    return quote(key, safe="").replace(".", "%2E")


@dataclass
class Deployment:
    server: ApiServer
    backend: ObjectStoreBackend
    home: Path
    run_id: str
    asset_id: int
    config: dict[str, str]

    def task_path(self, task_id: str, key: str | None = None, *, api: str = "/objstore-backend", **query: Any) -> str:
        path = f"{api}/dags/{DAG_ID}/dagRuns/{quote(self.run_id, safe='')}/taskInstances/{task_id}/state-store"
        if key is not None:
            path += "/" + _segment(key)
        return path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")

    def asset_path(self, key: str | None = None, *, api: str = "/objstore-backend") -> str:
        return f"{api}/assets/{self.asset_id}/state-store" + ("/" + _segment(key) if key is not None else "")

    def scope(self, task_id: str, map_index: int = -1) -> Any:
        """The task instance's scope as Airflow's API places it: on 3.4 a mapped instance is in a
        dynamic region (``region_id``, ``region_index``), which the answer carries."""
        from airflow.state import TaskScope

        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(self.run_id, safe='')}/taskInstances/{task_id}"
        ti = self.server.call("GET", path + (f"/{map_index}" if map_index >= 0 else ""), "admin").json()
        if "region_id" not in ti:
            return TaskScope(dag_id=DAG_ID, run_id=self.run_id, task_id=task_id, map_index=map_index)
        region: Any = {"region_id": UUID(ti["region_id"]), "region_index": ti["region_index"]}
        return TaskScope(dag_id=DAG_ID, run_id=self.run_id, task_id=task_id, **region)

    def db_rows(self) -> int:
        with sqlite3.connect(self.home / "airflow.db") as db:
            return sum(
                db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("task_state_store", "asset_state_store")
            )  # noqa: S608


@contextmanager
def _deployed(
    tmp_path: Path, migrated_db: Path, moto_server: Any, s3_client: Any, bucket: str, mode_setting: str
) -> Iterator[Deployment]:
    """The example DAG run in one mode on its own bucket, then an API server over the result."""
    s3_client.create_bucket(Bucket=bucket)
    options = {
        "endpoint_url": moto_server.endpoint_url,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    config = {
        mode_setting: BACKEND,
        "AIRFLOW__OBJSTORE_BACKEND__PATH": f"s3://{bucket}/airflow/state/",
        "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS": json.dumps(options),
        **auth_settings(tmp_path),
    }
    run_demo(migrated_db, tmp_path, **config)
    server = ApiServer(tmp_path, airflow_env(tmp_path, **config)).wait_ready()
    try:
        [run] = server.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", "admin").json()["dag_runs"]
        [asset] = [a for a in server.call("GET", "/api/v2/assets", "admin").json()["assets"] if a["name"] == "orders"]
        backend = ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/airflow/state", storage_options=options))
        yield Deployment(server, backend, tmp_path, run["dag_run_id"], asset["id"], config)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path, moto_server: Any, s3_client: Any
) -> Iterator[Deployment]:
    """Primary mode: ``[state_store] backend``."""
    home = tmp_path_factory.mktemp("plugin-primary")
    with _deployed(home, migrated_db, moto_server, s3_client, "plugin-primary", "AIRFLOW__STATE_STORE__BACKEND") as d:
        yield d


@pytest.fixture(scope="module")
def offload_deployment(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path, moto_server: Any, s3_client: Any
) -> Iterator[Deployment]:
    """Offload mode: ``[workers] state_store_backend``."""
    home = tmp_path_factory.mktemp("plugin-offload")
    setting = "AIRFLOW__WORKERS__STATE_STORE_BACKEND"
    with _deployed(home, migrated_db, moto_server, s3_client, "plugin-offload", setting) as d:
        yield d


# -- Airflow's auth on every route ---------------------------------------------------------

WRITE = {"Content-Type": "application/json", "X-Objstore-Backend": "1"}


def _routes(d: Deployment) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every route, on a scope and key no other test reads."""
    probe = "auth-probe"
    return [
        ("GET", d.task_path("advance_watermark"), None),
        ("GET", d.task_path("advance_watermark", probe), None),
        ("PUT", d.task_path("advance_watermark", probe), {"value": 1}),
        ("PATCH", d.task_path("advance_watermark", probe), {"value": 2}),
        ("DELETE", d.task_path("advance_watermark", probe), None),
        ("DELETE", d.task_path("advance_watermark"), None),
        ("GET", d.asset_path(), None),
        ("GET", d.asset_path(probe), None),
        ("PUT", d.asset_path(probe), {"value": 1}),
        ("PATCH", d.asset_path(probe), {"value": 2}),
        ("DELETE", d.asset_path(probe), None),
        ("GET", "/objstore-backend/overview", None),
        ("POST", "/objstore-backend/overview/inventory", None),
        ("GET", f"/objstore-backend/ui/task-instance?dag_id={DAG_ID}&run_id=r&task_id=t", None),
        ("GET", "/objstore-backend/ui/assets", None),
        ("GET", "/objstore-backend/ui/overview", None),
    ]


def test_every_route_requires_airflow_auth_with_the_permission_of_its_action(deployment: Deployment) -> None:
    server = deployment.server
    for method, path, body in _routes(deployment):
        where = f"{method} {path}"
        assert server.call(method, path, json=body, headers=WRITE).status_code == 401, where
        bad = {**WRITE, "Authorization": "Bearer not-a-token"}
        assert server.client.request(method, path, json=body, headers=bad).status_code == 403, where
        viewer = server.call(method, path, "viewer", json=body, headers=WRITE).status_code
        reads = method == "GET" or path.endswith("/overview/inventory")
        assert (viewer not in (401, 403)) if reads else viewer == 403, f"{where}: viewer got {viewer}"
        admin = server.call(method, path, "admin", json=body, headers=WRITE).status_code
        assert admin < 400 or admin == 404, f"{where}: admin got {admin}"
    # the sub-app publishes no unauthenticated API description
    for path in ("/objstore-backend/docs", "/objstore-backend/redoc", "/objstore-backend/openapi.json"):
        assert server.call("GET", path).status_code in (401, 404), path


def test_the_plugin_is_loaded_from_the_package_entry_point(deployment: Deployment) -> None:
    plugins = deployment.server.call("GET", "/api/v2/plugins", "admin").json()["plugins"]
    [ours] = [p for p in plugins if p["name"] == "objstore_backend"]
    assert "objstore_backend.plugin:ObjectStorePlugin" in ours["source"]
    assert {v["destination"] for v in ours["external_views"]} == {"task_instance", "nav"}


# -- values: what tasks wrote, as the bucket holds them -------------------------------------


def test_lists_answer_like_airflow_with_the_values_tasks_wrote(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    answer = server.call("GET", deployment.task_path("submit_job"), "viewer").json()
    assert answer["total_entries"] == 3
    entries = {e["key"]: e for e in answer["task_state_store"]}
    assert list(entries) == ["job_id", "progress", "submitted_by"]  # ordered by key, like Airflow
    scope = deployment.scope("submit_job")
    for key, entry in entries.items():
        assert entry["value"] == json.loads(backend.get(scope, key)), key
        assert set(entry) >= {"key", "value", "updated_at", "expires_at"} and entry["mode"] == "primary"
    assert entries["submitted_by"]["expires_at"] is None and not entries["submitted_by"]["expired"]
    assert datetime.fromisoformat(entries["job_id"]["expires_at"]) > datetime.now(timezone.utc) + timedelta(days=2)

    mapped = server.call("GET", deployment.task_path("process", map_index=1), "viewer").json()
    assert [(e["key"], e["value"]) for e in mapped["task_state_store"]] == [("done", [2])]
    page = server.call("GET", deployment.task_path("submit_job", limit=1, offset=1), "viewer").json()
    assert [e["key"] for e in page["task_state_store"]] == ["progress"] and page["total_entries"] == 3

    assets = server.call("GET", deployment.asset_path(), "viewer").json()
    assert [(e["key"], e["value"]) for e in assets["asset_state_store"]] == [("watermark", 100)]
    one = server.call("GET", deployment.task_path("submit_job", "job_id"), "viewer").json()
    assert one["value"] == entries["job_id"]["value"]


def test_writes_land_in_the_bucket(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    scope = deployment.scope("process", 2)
    path = deployment.task_path("process", "cursor", map_index=2)
    assert server.call("PUT", path, "admin", json={"value": {"at": 1}, "expires_at": None}).status_code == 204
    assert json.loads(backend.get(scope, "cursor")) == {"at": 1}
    assert backend.store.head(f"{scope_prefix(scope)}cursor").expires_at is None
    later = datetime.now(timezone.utc) + timedelta(hours=5)
    assert server.call("PUT", path, "admin", json={"value": 1, "expires_at": later.isoformat()}).status_code == 204
    assert server.call("PATCH", path, "admin", json={"value": {"at": 2}}).status_code == 200  # keeps the expiry
    assert json.loads(backend.get(scope, "cursor")) == {"at": 2}
    assert abs(backend.store.head(f"{scope_prefix(scope)}cursor").expires_at - later) < timedelta(seconds=1)
    assert (
        server.call(
            "PATCH", deployment.task_path("process", "absent", map_index=2), "admin", json={"value": 1}
        ).status_code
        == 404
    )
    assert server.call("DELETE", path, "admin").status_code == 204
    assert backend.get(scope, "cursor") is None

    # a clear empties one map index, not its neighbours
    assert server.call("DELETE", deployment.task_path("process", map_index=0), "admin").status_code == 204
    assert backend.get(deployment.scope("process", 0), "done") is None
    assert json.loads(backend.get(deployment.scope("process", 1), "done")) == [2]
    # writes to a task instance that does not exist are refused before touching the bucket
    missing = deployment.task_path("no_such_task", "k")
    assert server.call("PUT", missing, "admin", json={"value": 1}).status_code == 404

    asset_path = deployment.asset_path("note")
    assert server.call("PUT", asset_path, "admin", json={"value": "kept"}).status_code == 204
    from airflow.state import AssetScope

    assert json.loads(backend.get(AssetScope(asset_id=deployment.asset_id), "note")) == "kept"
    assert server.call("DELETE", asset_path, "admin").status_code == 204
    assert backend.get(AssetScope(asset_id=deployment.asset_id), "note") is None
    assert server.call("GET", "/objstore-backend/assets/999999/state-store", "admin").status_code == 404


def test_a_key_hashed_in_its_path_is_listed_and_deleted_by_its_own_name(deployment: Deployment) -> None:
    """The list showed the hashed name, and a DELETE of it re-escaped it to another path: 204,
    nothing deleted. An object written before keys were recorded gets a clear refusal instead."""
    server, backend = deployment.server, deployment.backend
    scope = deployment.scope("process", 2)
    long_key, unrecorded = "状态" * 9 + "/" + "k" * 150, "z" * 200
    backend.set(scope, long_key, '"whole"')
    backend.store.write(object_path(scope, unrecorded), b'"old"', ObjectMetadata("primary"))  # as written before
    listed = server.call("GET", deployment.task_path("process", map_index=2), "viewer").json()["task_state_store"]
    hashed_name = encode_segment(unrecorded)
    assert {long_key, hashed_name} <= {e["key"] for e in listed}
    assert [e["value"] for e in listed if e["key"] == long_key] == ["whole"]

    assert server.call("DELETE", deployment.task_path("process", long_key, map_index=2), "admin").status_code == 204
    assert backend.get(scope, long_key) is None and backend.store.head(object_path(scope, long_key)) is None

    refused = server.call("DELETE", deployment.task_path("process", hashed_name, map_index=2), "admin")
    assert refused.status_code == 400 and "does not record the key" in refused.json()["detail"]
    assert backend.store.head(object_path(scope, unrecorded)) is not None
    backend.store.delete(object_path(scope, unrecorded))


# -- cross-site writes ---------------------------------------------------------------------


def test_cookie_authenticated_writes_need_what_a_cross_site_form_cannot_send(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    cookie = {"Cookie": f"_token={server.token('admin')}"}
    path = deployment.task_path("process", "csrf", map_index=2)
    scope = deployment.scope("process", 2)
    # what a form on another site can send: the cookie, a form content type, no custom header
    forged = server.client.put(
        path, content=b"value=1", headers={**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert forged.status_code == 403 and "X-Objstore-Backend" in forged.json()["detail"]
    forged_json = server.client.put(path, json={"value": 1}, headers=cookie)  # no header either
    assert forged_json.status_code == 403
    forged_delete = server.client.delete(deployment.task_path("process", map_index=1), headers=cookie)
    assert forged_delete.status_code == 403
    assert backend.get(scope, "csrf") is None and backend.get(deployment.scope("process", 1), "done") is not None
    # the header without a JSON body is still refused, with a clear status
    text = server.client.put(
        path, content=b'{"value": 1}', headers={**cookie, "X-Objstore-Backend": "1", "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    # the plugin's pages send both
    ok = server.client.put(path, json={"value": 1}, headers={**cookie, "X-Objstore-Backend": "1"})
    assert ok.status_code == 204 and backend.get(scope, "csrf") == "1"
    # reads by cookie need nothing more (the pages' GETs)
    assert server.client.get(path, headers=cookie).status_code == 200


# -- Airflow's own routes in primary mode ----------------------------------------------------


def test_airflow_own_state_routes_refuse_instead_of_diverging(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    rows_before = deployment.db_rows()
    job_id = backend.get(deployment.scope("submit_job"), "job_id")
    api = "/api/v2"
    routes = [
        ("GET", deployment.task_path("submit_job", api=api), None),
        ("GET", deployment.task_path("submit_job", "job_id", api=api), None),
        ("PUT", deployment.task_path("submit_job", "job_id", api=api), {"value": "diverged"}),
        ("PATCH", deployment.task_path("submit_job", "job_id", api=api), {"value": "diverged"}),
        ("DELETE", deployment.task_path("submit_job", "job_id", api=api), None),
        ("DELETE", deployment.task_path("submit_job", api=api), None),
        ("GET", deployment.asset_path(api=api), None),
        ("GET", deployment.asset_path("watermark", api=api), None),
        ("PUT", deployment.asset_path("watermark", api=api), {"value": 0}),
        ("DELETE", deployment.asset_path("watermark", api=api), None),
        ("DELETE", deployment.asset_path(api=api), None),
    ]
    for method, path, body in routes:
        refused = server.call(method, path, "admin", json=body)
        assert refused.status_code == 409, f"{method} {path}: {refused.status_code} {refused.text}"
        detail = refused.json()["detail"]
        assert "State store (object storage)" in detail and "/objstore-backend/" in detail
        assert path.replace(api, "/objstore-backend").split("?")[0] in detail
        # Airflow's own auth still answers first
        assert server.call(method, path, json=body).status_code == 401
        if method != "GET":
            assert server.call(method, path, "viewer", json=body).status_code == 403
    assert deployment.db_rows() == rows_before == 0  # nothing written to a table no task reads
    assert backend.get(deployment.scope("submit_job"), "job_id") == job_id


# -- hostile input ---------------------------------------------------------------------------


def test_hostile_ids_and_bodies_get_clear_answers_and_stay_in_scope(deployment: Deployment) -> None:
    server, backend = deployment.server, deployment.backend
    scope = deployment.scope("process", 2)
    prefix = scope_prefix(scope)
    before = {o.path for o in backend.store.iter_objects() if not o.path.startswith(prefix)}
    keys = ["a/b", "..", ".", "ünïcode ✓", "%2F", "k" * 2000]
    for key in keys:
        path = deployment.task_path("process", key, map_index=2)
        assert server.call("PUT", path, "admin", json={"value": {"key": key[:50]}}).status_code == 204, key
        answer = server.call("GET", path, "admin")
        assert answer.status_code == 200 and answer.json()["value"] == {"key": key[:50]}, key
    listed = server.call("GET", deployment.task_path("process", map_index=2, limit=100), "admin").json()
    assert {"a/b", "..", ".", "ünïcode ✓", "%2F"} <= {e["key"] for e in listed["task_state_store"]}
    # nothing was written or touched outside the task instance's prefix
    assert {o.path for o in backend.store.iter_objects() if not o.path.startswith(prefix)} == before

    # ids that would walk the layout: no route, or an empty answer, never another scope's keys
    assert (
        server.call(
            "GET", f"/objstore-backend/dags/..%2F{DAG_ID}/dagRuns/x/taskInstances/t/state-store", "admin"
        ).status_code
        == 404
    )
    dots = server.call("GET", f"/objstore-backend/dags/{DAG_ID}/dagRuns/../taskInstances/process/state-store", "admin")
    assert dots.status_code in (200, 404) and dots.json().get("total_entries", 0) == 0
    assert server.call("GET", deployment.task_path("process", map_index="-5"), "admin").status_code == 422

    path = deployment.task_path("process", "bad", map_index=2)
    raw = {"Authorization": f"Bearer {server.token('admin')}", "Content-Type": "application/json"}
    for body in (b"{not json", b'{"value": NaN}', b'{"value": null}', b'{"value": 1, "extra": 2}', b""):
        answer = server.client.put(path, content=body, headers=raw)
        assert answer.status_code == 422 and answer.json()["detail"], body
    assert backend.get(scope, "bad") is None

    # a huge value: over Airflow's own [state_store] max_value_storage_bytes the API refuses it as
    # Airflow's does; a task may still have stored one: the list leaves it out and says why, and a
    # GET of the key alone returns it whole
    huge = "x" * 600_000
    refused = server.call("PUT", deployment.task_path("process", "huge", map_index=2), "admin", json={"value": huge})
    assert refused.status_code == 422 and "max_value_storage_bytes" in refused.text
    backend.set(scope, "huge", json.dumps(huge))
    entries = {
        e["key"]: e
        for e in server.call("GET", deployment.task_path("process", map_index=2, limit=100), "admin").json()[
            "task_state_store"
        ]
    }
    assert entries["huge"]["value"] is None and "GET the key alone" in entries["huge"]["problem"]
    assert entries["huge"]["size_bytes"] >= 600_000
    assert server.call("GET", deployment.task_path("process", "huge", map_index=2), "admin").json()["value"] == huge

    # an expired key: shown as such until the GC collects it; tasks already see it gone
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    expired_path = deployment.task_path("process", "stale", map_index=2)
    assert server.call("PUT", expired_path, "admin", json={"value": 1, "expires_at": past}).status_code == 204
    entry = server.call("GET", expired_path, "admin").json()
    assert entry["expired"] is True and entry["value"] == 1
    assert backend.get(scope, "stale") is None


# -- the task instance tab in a real browser --------------------------------------------------


def test_task_instance_tab_shows_and_edits_the_bucket_in_a_browser(deployment: Deployment) -> None:
    from playwright.sync_api import sync_playwright

    server, backend = deployment.server, deployment.backend
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scope = deployment.scope("submit_job")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(server.url + "/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill("admin-pw")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(server.url + "/")

            page.goto(f"{server.url}/dags/{DAG_ID}/runs/{quote(deployment.run_id, safe='')}/tasks/submit_job")
            page.get_by_text("State store (object storage)").click()
            tab = page.frame_locator("iframe")
            progress = tab.locator("tr[data-key='progress']")
            progress.wait_for()
            table = tab.locator("#state-table").inner_text()
            assert backend.get(scope, "job_id").strip('"') in table and '"percent": 0' in table
            assert "never" in tab.locator("tr[data-key='submitted_by']").inner_text()
            assert tab.locator("#total").inner_text() == "3 keys"
            page.screenshot(path=str(ARTIFACTS / "task-instance-tab.png"))

            progress.get_by_role("button", name="Edit").click()
            progress.locator("textarea").fill('{"stage": "reset by an operator", "percent": 0}')
            progress.get_by_role("button", name="Save").click()
            tab.locator("#status").filter(has_text="Saved progress").wait_for()
            assert json.loads(backend.get(scope, "progress")) == {"stage": "reset by an operator", "percent": 0}
            assert "reset by an operator" in tab.locator("tr[data-key='progress']").inner_text()

            # Airflow's dark theme reaches the framed page
            light = tab.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
            page.evaluate("document.documentElement.classList.replace('light', 'dark')")
            tab.locator("html[data-theme='dark']").wait_for(state="attached")
            assert tab.locator("body").evaluate("b => getComputedStyle(b).backgroundColor") != light
            page.screenshot(path=str(ARTIFACTS / "task-instance-tab-dark.png"))
        finally:
            browser.close()


# -- offload mode: Airflow's rows, references resolved -----------------------------------------


def _row_value(d: Deployment, task_id: str, key: str) -> Any:
    with sqlite3.connect(d.home / "airflow.db") as db:
        found = db.execute(
            "SELECT value FROM task_state_store WHERE task_id = ? AND key = ?", (task_id, key)
        ).fetchone()
    return None if found is None else json.loads(found[0])


def test_offload_mode_shows_values_behind_airflow_references(offload_deployment: Deployment) -> None:
    d = offload_deployment
    server, store = d.server, d.backend.store
    entries = {e["key"]: e for e in server.call("GET", d.task_path("submit_job"), "viewer").json()["task_state_store"]}
    ref = _row_value(d, "submit_job", "job_id")["__airflow_state_ref__"]
    assert entries["job_id"]["value"] == json.loads(bytes(store.read(ref.removeprefix("objstore:")).body))
    assert entries["job_id"]["mode"] == "offload" and entries["submitted_by"]["expires_at"] is None
    assets = server.call("GET", d.asset_path(), "viewer").json()["asset_state_store"]
    assert [(e["key"], e["value"]) for e in assets] == [("watermark", 100)]
    # in offload mode Airflow's rows are what tasks read: its own routes answer as usual
    own = server.call("GET", d.task_path("submit_job", "job_id", api="/api/v2"), "viewer")
    assert own.status_code == 200 and own.json()["value"] == {"__airflow_state_ref__": ref}

    # a write goes where a task's would: the value to the bucket, the reference to Airflow's row
    path = d.task_path("submit_job", "operator_note")
    assert server.call("PUT", path, "admin", json={"value": {"why": "rerun"}, "expires_at": None}).status_code == 204
    note_ref = _row_value(d, "submit_job", "operator_note")["__airflow_state_ref__"]
    assert d.backend.deserialize_task_state_store_from_ref(note_ref) == {"why": "rerun"}
    assert server.call("DELETE", path, "admin").status_code == 204
    assert _row_value(d, "submit_job", "operator_note") is None
    assert store.read(note_ref.removeprefix("objstore:")) is None

    # an object missing behind a reference: the list says so, a GET of the key is a clear 502
    store.delete(ref.removeprefix("objstore:"))
    entries = {e["key"]: e for e in server.call("GET", d.task_path("submit_job"), "viewer").json()["task_state_store"]}
    assert entries["job_id"]["value"] is None and "which is missing" in entries["job_id"]["problem"]
    assert entries["progress"]["value"] == {"stage": "submitted", "percent": 0}  # the rest of the page is intact
    missing = server.call("GET", d.task_path("submit_job", "job_id"), "viewer")
    assert missing.status_code == 502 and ref.removeprefix("objstore:") in missing.json()["detail"]


def _stored_ref(d: Deployment, table: str, where: str, *params: Any) -> Any:
    with sqlite3.connect(d.home / "airflow.db") as db:
        found = db.execute(f"SELECT value FROM {table} WHERE {where}", params).fetchone()  # noqa: S608
    return None if found is None else json.loads(found[0])


def test_offload_mode_never_follows_a_reference_to_another_keys_object(offload_deployment: Deployment) -> None:
    """A row of this DAG holding a reference to another DAG's object, stored verbatim by Airflow's own
    REST API: the plugin shows no value, names the refusal, and its deletes leave that object alone."""
    from airflow.state import AssetScope, TaskScope

    d = offload_deployment
    server, backend = d.server, d.backend
    payroll = TaskScope(dag_id="payroll", run_id=d.run_id, task_id="pay", map_index=-1)
    forged = backend.serialize_task_state_store_to_ref(value={"salary": 123456}, key="secret", scope=payroll)
    payroll_path = forged.removeprefix("objstore:")

    def forge_row() -> None:
        own_route = d.task_path("advance_watermark", "stolen", api="/api/v2")
        stored = server.call("PUT", own_route, "admin", json={"value": {"__airflow_state_ref__": forged}})
        assert stored.status_code == 204, stored.text

    forge_row()
    listed = server.call("GET", d.task_path("advance_watermark"), "viewer").json()["task_state_store"]
    [entry] = [e for e in listed if e["key"] == "stolen"]
    assert entry["value"] is None and "123456" not in json.dumps(listed)
    assert f"the reference names {payroll_path}, which is not the object of this key" in entry["problem"]
    one = server.call("GET", d.task_path("advance_watermark", "stolen"), "viewer")
    assert one.status_code == 502 and "refused" in one.json()["detail"] and "123456" not in one.text

    assert server.call("DELETE", d.task_path("advance_watermark", "stolen"), "admin").status_code == 204
    assert _row_value(d, "advance_watermark", "stolen") is None  # Airflow's row goes
    assert backend.store.read(payroll_path) is not None  # the other DAG's object stays
    forge_row()
    assert server.call("DELETE", d.task_path("advance_watermark"), "admin").status_code == 204  # a clear
    assert _row_value(d, "advance_watermark", "stolen") is None
    assert backend.store.read(payroll_path) is not None

    # an asset's row naming another asset's object
    other = backend.serialize_asset_state_store_to_ref(value=[7] * 9, key="cursor", scope=AssetScope(name="payroll"))
    route = d.asset_path("cursor", api="/api/v2")
    assert server.call("PUT", route, "admin", json={"value": {"__airflow_state_ref__": other}}).status_code == 204
    listed = server.call("GET", d.asset_path(), "viewer").json()["asset_state_store"]
    [entry] = [e for e in listed if e["key"] == "cursor"]
    assert entry["value"] is None and "not the object of this key" in entry["problem"]
    assert server.call("DELETE", d.asset_path("cursor"), "admin").status_code == 204
    assert _stored_ref(d, "asset_state_store", "key = ?", "cursor") is None
    assert backend.store.read(other.removeprefix("objstore:")) is not None


def test_primary_writes_store_the_value_as_it_is_and_old_offload_objects_are_not_live(
    deployment: Deployment,
) -> None:
    """A PUT of a value shaped like a worker's reference stores that value, never copies the object it
    names; an offload-mode object left from before a switch to primary mode is listed without its
    value, saying why, and reads as no key."""
    from airflow.state import AssetScope

    d = deployment
    server, backend = d.server, d.backend
    payroll_scope = AssetScope(name="payroll")
    payroll = backend.serialize_asset_state_store_to_ref(value={"pay": 1}, key="cursor", scope=payroll_scope)
    typed = {"__airflow_state_ref__": payroll}
    assert server.call("PUT", d.asset_path("cursor"), "admin", json={"value": typed}).status_code == 204
    asset = AssetScope(asset_id=d.asset_id)
    assert json.loads(backend.get(asset, "cursor")) == typed
    assert server.call("GET", d.asset_path("cursor"), "viewer").json()["value"] == typed
    assert server.call("PATCH", d.asset_path("cursor"), "admin", json={"value": typed}).status_code == 200
    assert json.loads(backend.get(asset, "cursor")) == typed
    assert server.call("DELETE", d.asset_path("cursor"), "admin").status_code == 204

    # an offload object at a primary key's path (its row expired or dropped before the switch)
    scope = d.scope("process", 2)
    backend.serialize_task_state_store_to_ref(value={"dead": True}, key="left_over", scope=scope)
    assert backend.get(scope, "left_over") is None
    listed = server.call("GET", d.task_path("process", map_index=2), "viewer").json()
    (left_over,) = [e for e in listed["task_state_store"] if e["key"] == "left_over"]
    assert left_over["value"] is None and left_over["mode"] == "offload"
    assert "before the switch to primary mode" in left_over["problem"]
    assert server.call("GET", d.task_path("process", "left_over", map_index=2), "viewer").status_code == 404
    patch = server.call("PATCH", d.task_path("process", "left_over", map_index=2), "admin", json={"value": 1})
    assert patch.status_code == 404
    put = server.call("PUT", d.task_path("process", "left_over", map_index=2), "admin", json={"value": 2})
    assert put.status_code == 204 and backend.get(scope, "left_over") == "2"
    assert server.call("DELETE", d.task_path("process", "left_over", map_index=2), "admin").status_code == 204


# -- Airflow 3.4's dynamic regions: a mapped instance's own keys ------------------------------


def test_a_mapped_instance_is_addressed_in_its_own_region(deployment: Deployment) -> None:
    """On 3.4 a mapped task instance lives in a dynamic region; its keys are read and written there,
    whether the request names only the map index (as the tab's link does) or the region too."""
    d = deployment
    server, backend = d.server, d.backend
    scope, neighbour = d.scope("process", 1), d.scope("process", 0)
    assert (getattr(scope, "region_id", UUID(int=0)) != UUID(int=0)) == (running_release() == "3.4")
    backend.set(scope, "region-probe", '{"own": 1}')
    backend.set(neighbour, "region-probe", '{"own": 0}')
    region = {"region_id": str(getattr(scope, "region_id", UUID(int=0))), "region_index": 1}
    by_index = server.call("GET", d.task_path("process", map_index=1), "viewer").json()["task_state_store"]
    by_region = server.call("GET", d.task_path("process", **region), "viewer").json()["task_state_store"]
    assert {"done", "region-probe"} <= {e["key"] for e in by_index} and by_index == by_region
    written = server.call("PUT", d.task_path("process", "from-api", **region), "admin", json={"value": 7})
    assert written.status_code == 204 and backend.get(scope, "from-api") == "7"
    # the tab's page resolves the region from Airflow's rows (3.4's UI fills only {MAP_INDEX})
    page = server.call(
        "GET",
        f"/objstore-backend/ui/task-instance?dag_id={DAG_ID}&run_id={quote(d.run_id, safe='')}"
        "&task_id=process&map_index=1",
        "viewer",
    ).text
    assert (region["region_id"] in page) == (running_release() == "3.4")

    # bad coordinates: named, nothing touched
    bad = server.call("GET", d.task_path("process", region_id="not-a-uuid", region_index=1), "viewer")
    assert bad.status_code == 400 and "region_id must be a UUID" in bad.json()["detail"]
    orphan_index = server.call("GET", d.task_path("process", region_index=1), "viewer")
    assert orphan_index.status_code == 400 and "region_index requires region_id" in orphan_index.json()["detail"]
    if running_release() == "3.4":  # the whole expansion at map_index -1: which instance is meant?
        ambiguous = server.call("GET", d.task_path("process"), "viewer")
        assert ambiguous.status_code == 400 and "region_index" in ambiguous.json()["detail"]
    # Airflow's own routes refuse with 3.4's region parameters too
    refused = server.call("GET", d.task_path("process", api="/api/v2", **region), "admin")
    assert refused.status_code == 409 and "/objstore-backend/" in refused.json()["detail"]

    # a clear empties this instance only; clearing it again is a no-op
    for _ in range(2):
        assert server.call("DELETE", d.task_path("process", map_index=1), "admin").status_code == 204
        assert backend.get(scope, "region-probe") is None and backend.get(scope, "done") is None
        assert backend.get(neighbour, "region-probe") == '{"own": 0}'


def test_offload_mode_reads_a_mapped_instance_from_its_region_rows(offload_deployment: Deployment) -> None:
    d = offload_deployment
    listed = d.server.call("GET", d.task_path("process", map_index=2), "viewer").json()["task_state_store"]
    assert [(e["key"], e["value"]) for e in listed] == [("done", [3])]


# -- Airflow's clears reach the bucket (primary mode) -------------------------------------------


def _clear(d: Deployment, server: ApiServer, task_ids: list[Any], **body: Any) -> Any:
    request = {"dag_run_id": d.run_id, "task_ids": task_ids, "only_failed": False, **body}
    return server.call("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", "admin", json=request)


def test_clearing_task_instances_clears_their_state_in_the_bucket(deployment: Deployment) -> None:
    """Airflow 3.4's clear discards task state unless told to keep it: the bucket's too. Airflow 3.3's
    clear keeps task state (its rows and the bucket alike)."""
    d = deployment
    backend = d.backend
    submit, mapped, neighbour = d.scope("submit_job"), d.scope("process", 0), d.scope("process", 2)
    for scope in (submit, mapped, neighbour):
        backend.set(scope, "clear-probe", '"here"')

    def kept(*scopes: Any) -> list[bool]:
        return [backend.get(scope, "clear-probe") is not None for scope in scopes]

    assert _clear(d, d.server, ["submit_job"]).status_code == 200  # a dry run by default
    assert _clear(d, d.server, ["submit_job"], dry_run=True).status_code == 200
    assert kept(submit, mapped, neighbour) == [True, True, True]
    if running_release() == "3.3":
        assert _clear(d, d.server, ["submit_job"], dry_run=False).status_code == 200
        assert kept(submit, mapped, neighbour) == [True, True, True]
        assert _clear(d, d.server, ["submit_job"], dry_run=False, keep_task_state=True).status_code == 422
        return
    assert _clear(d, d.server, ["submit_job"], dry_run=False, keep_task_state=True).status_code == 200
    assert kept(submit, mapped, neighbour) == [True, True, True]
    answer = _clear(d, d.server, ["submit_job"], dry_run=False)
    assert answer.status_code == 200 and [t["task_id"] for t in answer.json()["task_instances"]] == ["submit_job"]
    assert kept(submit, mapped, neighbour) == [False, True, True]
    assert backend.get(submit, "job_id") is None  # every key, not only the probe
    # a mapped instance: its own region and index, the rest of the expansion stays
    assert _clear(d, d.server, [["process", 0]], dry_run=False).status_code == 200
    assert kept(mapped, neighbour) == [False, True]
    # nothing left to clear: a no-op
    assert _clear(d, d.server, ["submit_job"], dry_run=False).status_code == 200


@pytest.fixture(scope="module")
def faulty_server(deployment: Deployment, s3_fault_proxy_server: Any) -> Iterator[ApiServer]:
    """A second API server on the same DB and bucket, reaching S3 through the fault proxy, with
    ``[state_store] clear_on_success`` on."""
    options = {
        **json.loads(deployment.config["AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS"]),
        "endpoint_url": s3_fault_proxy_server.url,
        "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05},
    }
    config = {
        **deployment.config,
        "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS": json.dumps(options),
        "AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS": "True",
    }
    server = ApiServer(deployment.home, airflow_env(deployment.home, **config), "api-server-faulty.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _mark(d: Deployment, server: ApiServer, task_id: str, state: str, map_index: int = -1) -> Any:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(d.run_id, safe='')}/taskInstances/{task_id}"
    path += f"/{map_index}" if map_index >= 0 else ""
    return server.call("PATCH", path, "admin", json={"new_state": state})


def test_marking_success_clears_the_bucket_when_clear_on_success_is_on(
    deployment: Deployment, faulty_server: ApiServer, s3_fault_proxy_server: Any
) -> None:
    """``[state_store] clear_on_success``: a task instance marked success loses its state in the
    bucket, as one that succeeds by itself does (3.3 and 3.4); without the setting it keeps it."""
    d = deployment
    backend = d.backend
    watermark, mapped, neighbour = d.scope("advance_watermark"), d.scope("process", 2), d.scope("process", 0)
    for scope in (watermark, mapped, neighbour):
        backend.set(scope, "success-probe", '"here"')
    for server, cleared in ((d.server, False), (faulty_server, True)):
        for task_id, index in (("advance_watermark", -1), ("process", 2)):
            assert _mark(d, server, task_id, "failed", index).status_code == 200
            assert _mark(d, server, task_id, "success", index).status_code == 200
        assert [backend.get(s, "success-probe") is None for s in (watermark, mapped)] == [cleared, cleared]
    assert backend.get(neighbour, "success-probe") is not None


def test_a_clear_the_bucket_refuses_answers_502_naming_what_is_left(
    deployment: Deployment, faulty_server: ApiServer, s3_fault_proxy_server: Any
) -> None:
    d = deployment
    scope = d.scope("process", 1)
    d.backend.set(scope, "fault-probe", '"here"')
    s3_fault_proxy_server.reset()
    s3_fault_proxy_server.inject("500", when=lambda r: r.method in ("DELETE", "POST"))
    try:
        answer = _clear(d, faulty_server, [["process", 1]], dry_run=False)
    finally:
        s3_fault_proxy_server.reset()
    if running_release() == "3.3":  # Airflow 3.3's clear keeps task state: nothing to fail
        assert answer.status_code == 200 and d.backend.get(scope, "fault-probe") is not None
        return
    assert answer.status_code == 502, answer.text
    [left] = answer.json()["task_instances_left"]
    assert (left["task_id"], left["map_index"]) == ("process", 1) and d.backend.get(scope, "fault-probe") is not None
    method, path = left["clear_with"].split(" ", 1)
    assert d.server.call(method, path, "admin").status_code == 204
    assert d.backend.get(scope, "fault-probe") is None


def test_offload_clear_leaves_objects_the_gc_reconciliation_reclaims(offload_deployment: Deployment) -> None:
    """Offload mode: Airflow 3.4's clear drops the rows holding references; the GC with Airflow's DB
    reclaims exactly those objects. On 3.3 the clear keeps the rows, and the GC the objects."""
    from objstore_backend.gc import GCOptions, run_gc
    from objstore_backend.reconcile import AirflowDBReconciler

    d = offload_deployment
    store = d.backend.store

    def refs(task_id: str) -> set[str]:
        with sqlite3.connect(d.home / "airflow.db") as db:
            values = db.execute("SELECT value FROM task_state_store WHERE task_id = ?", (task_id,)).fetchall()
        found = (json.loads(v).get("__airflow_state_ref__", "") for (v,) in values)
        return {ref.removeprefix("objstore:") for ref in found if ref.startswith("objstore:")}

    kept_value = {"kept": "x" * 5000}  # an object of another task, referenced all along
    put = d.server.call("PUT", d.task_path("advance_watermark", "kept"), "admin", json={"value": kept_value})
    assert put.status_code == 204

    def present(paths: set[str]) -> set[str]:  # an earlier test deleted one object by hand
        return {path for path in paths if store.head(path) is not None}

    submitted, watermark = present(refs("submit_job")), present(refs("advance_watermark"))
    assert submitted and watermark
    assert _clear(d, d.server, ["submit_job"], dry_run=False).status_code == 200
    discarded = running_release() == "3.4"
    assert (refs("submit_job") == set()) == discarded
    reconciler = AirflowDBReconciler(f"sqlite:///{d.home / 'airflow.db'}")
    report = run_gc(store, GCOptions(reconciler=reconciler, offload_grace=timedelta(0)))
    assert not report.errors
    assert all((store.head(path) is None) == discarded for path in submitted)
    assert all(store.head(path) is not None for path in watermark)
