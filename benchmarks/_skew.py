"""The GC benchmarks' skewed bucket: one DAG holds half the keys, the rest spread over 40 small DAGs.

The big DAG has runs of 50 keys (5 tasks, 10 map indices); the small DAGs one task each, a run
per 400 keys of the bucket. Paths come from the store's own layout, relative to the base path.
"""

from __future__ import annotations

from types import SimpleNamespace

from objstore_backend.layout import object_path


def skewed_path(i: int, total: int) -> str:
    """The path of key ``i`` of a bucket of ``total`` keys."""
    if i < total // 2:
        scope = SimpleNamespace(dag_id="big", run_id=f"run{i // 50:06}", task_id=f"t{i % 5}", map_index=i % 10)
    else:
        scope = SimpleNamespace(dag_id=f"dag{i % 40:02}", run_id=f"run{i // 400:05}", task_id="t", map_index=-1)
    return object_path(scope, f"k{i}")
