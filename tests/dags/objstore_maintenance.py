"""Airflow DAGs for tests/test_airflow_dags.py: the GC and audit DAGs with the options the tests vary."""

from __future__ import annotations

from datetime import timedelta

from objstore_backend.dags import audit_dag, gc_dag

QUICK_RETRY = {"retries": 1, "retry_delay": timedelta(seconds=1)}

gc_sharded = gc_dag(dag_id="gc_sharded", shards=3, offload_grace=timedelta(0), airflow_db_conn_id="airflow_db_reader")
gc_retried = gc_dag(dag_id="gc_retried", default_args=QUICK_RETRY)
gc_no_retry = gc_dag(dag_id="gc_no_retry", default_args={"retries": 0})
audit_strict = audit_dag(dag_id="audit_strict", fail_on="warning")
audit_lenient = audit_dag(dag_id="audit_lenient")
