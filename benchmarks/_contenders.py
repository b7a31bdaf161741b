"""The contenders the comparison runs side by side, each offering the same few calls.

* :class:`StateBackend`: an Airflow state-store backend, called through Airflow's interface:
  ours (``objstore_backend.ObjectStoreBackend``) or common.io's
  (``StateStoreObjectStorageBackend`` of apache-airflow-providers-common-io);
* :class:`RawFS`: plain fsspec calls on bytes (raw s3fs / gcsfs), the floor: no Airflow, no
  metadata, no validation.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from typing import Any

from _servers import S3_OPTIONS

#: One timed call of the ops section: ``(scope, key)``.
Op = Callable[[Any, str], Any]

#: The bucket of each S3 contender on the moto server (the caller creates them).
S3_BUCKETS = {"ours": "bench-ours", "common.io": "bench-cio", "raw s3fs": "bench-raw"}


class StateBackend:
    """A state-store backend of Airflow's interface, ``backend``, under the name ``name``."""

    def __init__(self, name: str, backend: Any) -> None:
        self.name, self.backend = name, backend

    def ops(self, mode: str, value: Any) -> tuple[Op, Op, Op]:
        """Set, get and delete of ``value`` in ``mode``: ``primary`` (JSON text) or ``offload`` (refs)."""
        b = self.backend
        if mode == "primary":
            text = json.dumps(value)
            return (lambda s, k: b.set(s, k, text), lambda s, k: b.get(s, k), lambda s, k: b.delete(s, k))
        refs: dict[tuple[Any, str], str] = {}

        def put(s: Any, k: str) -> None:
            refs[(s, k)] = b.serialize_task_state_store_to_ref(value=value, key=k, scope=s)

        return put, lambda s, k: b.deserialize_task_state_store_from_ref(refs[(s, k)]), lambda s, k: b.delete(s, k)

    def write(self, scope: Any, key: str, text: str) -> None:
        self.backend.set(scope, key, text)

    def clear_task(self, scope: Any) -> None:
        self.backend.clear(scope, all_map_indices=True)


class RawFS:
    """Plain fsspec calls on bytes under ``base``, no listings cache: the floor."""

    def __init__(self, name: str, fs: Any, base: str, cat_kwargs: dict[str, Any] | None = None) -> None:
        self.name, self.fs, self.base, self.cat_kwargs = name, fs, base.rstrip("/"), cat_kwargs or {}

    def path(self, scope: Any, key: str) -> str:
        return f"{self.base}/{scope.dag_id}/{scope.run_id}/{scope.task_id}/{scope.map_index}/{key}"

    def ops(self, mode: str, value: Any) -> tuple[Op, Op, Op]:
        """Pipe, cat and rm of ``value``'s JSON bytes: the same in both modes."""
        data = json.dumps(value).encode()
        fs = self.fs
        return (
            lambda s, k: fs.pipe_file(self.path(s, k), data),
            lambda s, k: fs.cat_file(self.path(s, k), **self.cat_kwargs),
            lambda s, k: fs.rm_file(self.path(s, k)),
        )

    def write(self, scope: Any, key: str, text: str) -> None:
        self.fs.pipe_file(self.path(scope, key), text.encode())

    def clear_task(self, scope: Any) -> None:
        self.fs.rm(f"{self.base}/{scope.dag_id}/{scope.run_id}/{scope.task_id}/", recursive=True)


Contender = StateBackend | RawFS


def ours(url: str, options: dict[str, Any]) -> StateBackend:
    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings

    return StateBackend("ours", ObjectStoreBackend(StoreSettings(path=url, storage_options=options)))


def common_io(endpoint: str, bucket: str) -> StateBackend:
    """common.io's backend on ``bucket`` of moto, through ``[common.io]`` and an Airflow connection.

    Both are set in the environment, so that processes started later (the large section's
    memory measurements) get the same configuration; the provider caches its config, so this
    is set once, before the first backend is made.
    """
    os.environ["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"] = f"s3://moto_conn@{bucket}/state/"
    os.environ["AIRFLOW_CONN_MOTO_CONN"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )
    from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

    return StateBackend("common.io", StateStoreObjectStorageBackend())


def raw_s3fs(endpoint: str, bucket: str) -> RawFS:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False, **S3_OPTIONS)
    # max_concurrency=1: one GET (the default HEADs first for the size: 2 requests)
    return RawFS("raw s3fs", fs, f"{bucket}/raw", {"max_concurrency": 1})


def s3_contender(name: str, endpoint: str) -> Contender:
    """The contender ``name`` (a key of :data:`S3_BUCKETS`) on its bucket of the moto server."""
    bucket = S3_BUCKETS[name]
    if name == "ours":
        return ours(f"s3://{bucket}/state/", {**S3_OPTIONS, "endpoint_url": endpoint})
    if name == "common.io":
        return common_io(endpoint, bucket)
    return raw_s3fs(endpoint, bucket)


def why_no_common_io_on_gcs() -> str:
    """Why the GCS section has no common.io column."""
    if importlib.util.find_spec("airflow.providers.google") is None:
        return "gs:// needs apache-airflow-providers-google (not installed)"
    return "not run by this script (its google_cloud_platform connection would need the emulator's endpoint)"
