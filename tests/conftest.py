"""Fixtures: real stores for every test that needs one.

``store_url`` and ``make_backend`` run a test on each kind of store: memory (fast, the
fsspec test seam), the local disk (the embedded default) and S3 through s3fs against moto's
HTTP server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from tests.servers import CountingMotoServer

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[CountingMotoServer]:
    server = CountingMotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_server: CountingMotoServer) -> Any:
    return boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = f"state-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_options(moto_server: CountingMotoServer) -> dict[str, Any]:
    return {
        "endpoint_url": moto_server.endpoint_url,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }


STORE_KINDS = ["memory", "local", "s3"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_location(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> tuple[str, dict[str, Any]]:
    """(base URL, storage options) of a fresh, empty store of ``store_kind``."""
    if store_kind == "memory":
        return f"memory://state-{uuid.uuid4().hex[:12]}/base", {}
    if store_kind == "local":
        return str(tmp_path / "state"), {}
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/airflow/state", request.getfixturevalue("s3_options")


@pytest.fixture
def make_backend(store_location: tuple[str, dict[str, Any]]) -> Callable[..., Any]:
    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings

    url, options = store_location

    def make(**settings: Any) -> ObjectStoreBackend:
        return ObjectStoreBackend(StoreSettings(path=url, storage_options=options, **settings))

    return make


@pytest.fixture
def backend(make_backend: Callable[..., Any]) -> Any:
    return make_backend()
