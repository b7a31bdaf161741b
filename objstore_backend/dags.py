"""Ready-made Airflow DAGs for the GC and the audit, where no Kubernetes CronJob can run them.

Managed Airflow (Amazon MWAA, Cloud Composer, Astronomer) and VM installs cannot schedule the
``objstore-backend gc`` CronJob, and without a GC the bucket grows forever; Airflow itself is
the scheduler they all have. A DAG file of two lines enables the GC::

    # Airflow DAG: the objstore-backend GC, daily. Keep this comment: Airflow's safe mode only
    # parses files whose text names "airflow" and "dag".
    from objstore_backend.dags import gc_dag

    dag = gc_dag()

Each shard is one mapped task instance (``.expand`` over the shard indexes), so N workers sweep
in parallel with Airflow's retries, logs and alerts. The store's settings are read when a task
runs, from the ``[objstore_backend]`` section the backend uses: parsing the file needs no
credentials and nothing is configured twice. Airflow is imported inside the functions, so
``import objstore_backend.dags`` works without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from objstore_backend.audit import LEVELS, run_audit
from objstore_backend.errors import StoreError
from objstore_backend.gc import GCOptions, GCReport, Reconciler, run_gc
from objstore_backend.metrics import report_audit, report_gc
from objstore_backend.store import ObjectStore

if TYPE_CHECKING:
    from airflow.sdk import DAG

__all__ = ["AUDIT_DAG_ID", "GC_DAG_ID", "add_up_summaries", "audit_dag", "gc_dag"]

logger = logging.getLogger(__name__)

GC_DAG_ID = "objstore_backend_gc"
AUDIT_DAG_ID = "objstore_backend_audit"
_XCOM_RETURN_KEY = "return_value"
_MAX_SAMPLES = 10


def _dag_arguments(dag_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Our defaults for a maintenance DAG, each overridable by the caller's ``dag()`` keywords."""
    defaults: dict[str, Any] = {
        "start_date": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "catchup": False,
        "max_active_runs": 1,  # two sweeps at once are safe, but the second one is wasted work
        "tags": ["objstore-backend"],
        "default_args": {"retries": 2, "retry_delay": timedelta(minutes=5)},
    }
    return {**defaults, **dag_kwargs}


def _open_store() -> ObjectStore:
    """The store the backend uses: ``[objstore_backend]`` settings, a connection id resolved."""
    from objstore_backend.backend import settings_from_airflow

    return ObjectStore(*settings_from_airflow().resolve())


def _sqlalchemy_url(conn_id: str) -> str:
    """A SQLAlchemy URL from an Airflow connection's fields (its type names the dialect).

    Not the connection's URI: Airflow spells it ``postgres://`` (SQLAlchemy wants ``postgresql``)
    and quotes a SQLite path into the host part. Extras are not passed on (they hold options of
    Airflow's hooks); set e.g. ``PGSSLMODE`` in the workers' environment.
    """
    import sqlalchemy
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    conn_type = connection.conn_type or ""
    url = sqlalchemy.engine.URL.create(
        {"postgres": "postgresql"}.get(conn_type, conn_type),
        username=connection.login or None,
        password=connection.password or None,
        host=connection.host or None,
        port=connection.port or None,
        database=connection.schema or None,
    )
    return url.render_as_string(hide_password=False)


def _reconciler(conn_id: str | None) -> Reconciler | None:
    if conn_id is None:
        return None
    from objstore_backend.reconcile import AirflowDBReconciler

    return AirflowDBReconciler(_sqlalchemy_url(conn_id))


def _fail_with(summary: Mapping[str, Any], error: Exception) -> NoReturn:
    """Keep the summary as the failed task's XCom (for callbacks and the UI), then fail the task."""
    from airflow.sdk import get_current_context

    get_current_context()["ti"].xcom_push(_XCOM_RETURN_KEY, summary)
    raise error


def add_up_summaries(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The shards' GC summaries as one: counters and seconds summed, samples pooled (first few)."""
    total: dict[str, Any] = {"shards": 0, **GCReport().as_dict()}
    del total["shard"]
    for summary in summaries:
        total["shards"] += 1
        for name, value in summary.items():
            if name in ("error_samples", "would_delete"):
                total[name] = (total[name] + list(value))[: 100 if name == "would_delete" else _MAX_SAMPLES]
            elif name == "dry_run":
                total[name] = bool(value)
            elif isinstance(value, (int, float)) and name in total:
                total[name] += value
    total["seconds"] = round(total["seconds"], 3)
    return total


def gc_dag(
    *,
    dag_id: str = GC_DAG_ID,
    schedule: Any = "@daily",
    shards: int = 1,
    concurrency: int = 32,
    dry_run: bool = False,
    offload_grace: timedelta = timedelta(hours=1),
    airflow_db_conn_id: str | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """The GC as a DAG: ``shards`` mapped ``sweep`` task instances, then a ``total`` of their summaries.

    Each shard logs its summary, returns it (XCom), and fails when the sweep had errors, so
    Airflow's retries, failure callbacks and grid show it; a retry is safe (deletes are
    conditional, and what a failed try deleted is simply no longer listed).
    ``airflow_db_conn_id``: an Airflow connection whose URI is a SQLAlchemy URL of Airflow's
    metadata DB, through a read-only role, to reclaim orphaned offload objects (Airflow 3 tasks
    may not use Airflow's own DB session). Other keywords go to ``dag()`` (e.g. ``default_args``).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    GCOptions(concurrency=concurrency)  # checks the options when the file is parsed, not at 3 a.m.
    from airflow.sdk import dag, get_current_context, task

    @task(map_index_template="{{ shard_label }}", multiple_outputs=False)
    def sweep(shard: int) -> dict[str, Any]:
        get_current_context()["shard_label"] = f"shard {shard}/{shards}"  # type: ignore[typeddict-unknown-key]
        store = _open_store()
        options = GCOptions(
            dry_run=dry_run,
            concurrency=concurrency,
            shard=(shard, shards),
            offload_grace=offload_grace,
            reconciler=_reconciler(airflow_db_conn_id),
        )
        report = run_gc(store, options)
        report_gc(report)
        summary = report.as_dict()
        logger.info("GC of %s, shard %s: %s", store.url, report.shard, orjson.dumps(summary).decode())
        if report.errors:
            _fail_with(
                summary,
                StoreError(
                    f"GC of {store.url}, shard {report.shard}: {report.errors} of its reads or deletes failed: "
                    + "; ".join(report.error_samples)
                ),
            )
        return summary

    @task(multiple_outputs=False)
    def total(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        # by index: iterating Airflow's lazy sequence reads one past the end (an error in the log)
        totals = add_up_summaries(summaries[index] for index in range(len(summaries)))
        logger.info("GC totals over %d shards: %s", totals["shards"], orjson.dumps(totals).decode())
        return totals

    @dag(dag_id=dag_id, schedule=schedule, **_dag_arguments(dag_kwargs))
    def objstore_backend_gc() -> None:
        total(sweep.expand(shard=list(range(shards))))  # type: ignore[arg-type]

    return objstore_backend_gc()


def audit_dag(
    *,
    dag_id: str = AUDIT_DAG_ID,
    schedule: Any = "@daily",
    fail_on: str = "error",
    concurrency: int = 32,
    **dag_kwargs: Any,
) -> DAG:
    """The audit as a DAG of one ``audit`` task, failing on a finding at ``fail_on`` or above.

    The report goes to the task's log and XCom (also when it fails). Findings fail the task
    without retries (they will not change in five minutes); a failed read fails it like any
    error, so it is retried.
    """
    if fail_on not in LEVELS:
        raise ValueError(f"fail_on must be one of {', '.join(LEVELS)}, got {fail_on!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    from airflow.sdk import dag, task
    from airflow.sdk.exceptions import AirflowFailException

    @task(multiple_outputs=False)
    def audit() -> dict[str, Any]:
        store = _open_store()
        report = run_audit(store, concurrency=concurrency)
        report_audit(report)
        summary = report.as_dict()
        inventory = report.inventory
        logger.info("audit of %s: %d keys, %d bytes", store.url, inventory.keys, inventory.bytes)
        for finding in report.findings:
            logger.info("audit finding %s %s: %s", finding.level.upper(), finding.code, finding.message)
        logger.info("audit report: %s", orjson.dumps(summary).decode())
        if inventory.errors:
            _fail_with(summary, StoreError(f"audit of {store.url}: reading failed: " + "; ".join(inventory.errors)))
        if report.fails(fail_on):
            failing = [f.code for f in report.findings if LEVELS.index(f.level) >= LEVELS.index(fail_on)]
            _fail_with(
                summary,
                AirflowFailException(f"audit of {store.url}: findings at {fail_on} or above: {', '.join(failing)}"),
            )
        return summary

    @dag(dag_id=dag_id, schedule=schedule, **_dag_arguments(dag_kwargs))
    def objstore_backend_audit() -> None:
        audit()

    return objstore_backend_audit()
