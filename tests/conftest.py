"""Fixtures: real stores for every test that needs one.

``store_location`` and ``make_backend`` run a test on each kind of store: memory (fast, the
fsspec test seam), the local disk (the embedded default), S3 through s3fs against moto's HTTP
server, GCS through gcsfs against fake-gcs-server, and Azure Blob Storage through adlfs and the
azure-storage-blob SDK against Azurite (each emulator started here on a free port, behind a
request-counting proxy). ``s3_fault_proxy`` / ``s3_fault_options`` put the same fault-injecting
proxy in front of moto (see ``tests.servers.CountingProxy.inject``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from tests.airflow_home import migrate, running_release
from tests.servers import (
    CountingMotoServer,
    CountingProxy,
    FTPServer,
    azurite,
    azurite_connection_string,
    create_azure_container,
    create_gcs_bucket,
    fake_gcs_server,
)
from tests.statsd_listener import StatsdListener

# gcsfs 2026.x probes the bucket type over gRPC first, which stalls against an emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

#: Fixtures that migrate or run Airflow: a test using one depends on the Airflow release.
AIRFLOW_FIXTURES = {"migrated_db"}
#: Modules that do not depend on the Airflow release and run once, in the run beside the 3.3 run
#: (scripts/test.sh): the two runs then take about the same time.
BESIDE_MODULES = {"test_gc_scale.py"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the marks below must be there by then
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what depends on the Airflow release ``airflow_bound`` (scripts/test.sh runs it on 3.3 and
    again on 3.4): a test marked so, one that runs Airflow (``airflow``) or uses an Airflow fixture, unless
    it runs ``every_release`` itself; mark the rest of :data:`BESIDE_MODULES` ``beside``; drop ``airflow34``
    tests when this venv's Airflow is 3.3."""
    on_airflow_33 = running_release() == "3.3"
    kept, deselected = [], []
    for item in items:
        bound = item.get_closest_marker("airflow") or AIRFLOW_FIXTURES & set(item.fixturenames)
        if item.get_closest_marker("airflow34") or bound and not item.get_closest_marker("every_release"):
            item.add_marker(pytest.mark.airflow_bound)
        elif item.path.name in BESIDE_MODULES:
            item.add_marker(pytest.mark.beside)
        (deselected if on_airflow_33 and item.get_closest_marker("airflow34") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SQLite DB migrated by `airflow db migrate` (which takes a while); copy it to use it."""
    return migrate(tmp_path_factory.mktemp("airflow-template"))


@pytest.fixture
def statsd_listener() -> Iterator[StatsdListener]:
    """A StatsD server on a free loopback UDP port, for one test."""
    listener = StatsdListener().start()
    yield listener
    listener.stop()


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


@pytest.fixture(scope="session")
def s3_fault_proxy_server(moto_server: CountingMotoServer) -> Iterator[CountingProxy]:
    proxy = CountingProxy(moto_server.endpoint_url, dialect="s3").start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_fault_proxy(s3_fault_proxy_server: CountingProxy) -> Iterator[CountingProxy]:
    """A fault-injecting proxy in front of moto, clean for each test (see ``CountingProxy.inject``)."""
    s3_fault_proxy_server.reset()
    s3_fault_proxy_server.stall_seconds = 0.4
    yield s3_fault_proxy_server
    s3_fault_proxy_server.reset()


@pytest.fixture
def s3_fault_options(s3_fault_proxy: CountingProxy) -> dict[str, Any]:
    """S3 storage options through the fault proxy: short timeouts and a fast retry backoff.

    The read timeout (shorter than the proxy's stall) bounds a ``stall``; the backoff keeps a test
    of five attempts well under a second.
    """
    return {
        "endpoint_url": s3_fault_proxy.url,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {"connect_timeout": 0.25, "read_timeout": 0.25},
        "retry": {"attempts": 5, "base_delay": 0.01, "max_delay": 0.05},
    }


@pytest.fixture(scope="session")
def gcs_proxy() -> Iterator[CountingProxy]:
    """fake-gcs-server on a free port, behind a proxy that counts requests and can inject faults."""
    server, url = fake_gcs_server()
    proxy = CountingProxy(url).start()
    yield proxy
    proxy.stop()
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def gcs_options(gcs_proxy: CountingProxy) -> dict[str, Any]:
    return {"token": "anon", "endpoint_url": gcs_proxy.url}


@pytest.fixture
def gcs_bucket(gcs_proxy: CountingProxy) -> str:
    name = f"state-{uuid.uuid4().hex[:12]}"
    create_gcs_bucket(gcs_proxy.url, name)
    return name


@pytest.fixture(scope="session")
def azure_proxy() -> Iterator[CountingProxy]:
    """Azurite's Blob service on a free port, behind a proxy that counts requests and can inject faults."""
    # the SDK logs each request at INFO: the fixtures' own set-up calls would fill every report
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

    server, url = azurite()
    proxy = CountingProxy(url, dialect="azure").start()
    proxy.upstream_url = url  # type: ignore[attr-defined]
    yield proxy
    proxy.stop()
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def azure_options(azure_proxy: CountingProxy) -> dict[str, Any]:
    return {"connection_string": azurite_connection_string(azure_proxy.url)}


@pytest.fixture
def azure_container(azure_proxy: CountingProxy) -> str:
    name = f"state-{uuid.uuid4().hex[:12]}"
    create_azure_container(azure_proxy.url, name)
    return name


@pytest.fixture
def azure_fault_proxy(azure_proxy: CountingProxy) -> Iterator[CountingProxy]:
    """The Azurite proxy, clean for each test and after it (see ``CountingProxy.inject``)."""
    azure_proxy.reset()
    azure_proxy.stall_seconds = 0.6
    yield azure_proxy
    azure_proxy.reset()


@pytest.fixture
def azure_fault_options(azure_fault_proxy: CountingProxy) -> dict[str, Any]:
    """Azure storage options through the fault proxy: short timeouts and a fast retry backoff."""
    return {
        "connection_string": azurite_connection_string(azure_fault_proxy.url),
        "connection_timeout": 0.5,
        "read_timeout": 0.3,
        "retry": {"attempts": 5, "base_delay": 0.01, "max_delay": 0.05},
    }


STORE_KINDS = ["memory", "local", "s3", "gcs", "azure"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_location(store_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """(base URL, storage options) of a fresh, empty store of ``store_kind``."""
    if store_kind == "memory":
        return f"memory://state-{uuid.uuid4().hex[:12]}/base", {}
    if store_kind == "local":
        return str(tmp_path / "state"), {}
    if store_kind == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/airflow/state", request.getfixturevalue("gcs_options")
    if store_kind == "azure":
        container = request.getfixturevalue("azure_container")
        return f"abfs://{container}/airflow/state", request.getfixturevalue("azure_options")
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server (Debian's), in a temporary directory, for the whole session."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """An FTP server (fsspec's ``ftp``): a filesystem with no conditional delete or create."""
    server = FTPServer(tmp_path_factory.mktemp("ftp")).start()
    yield server
    server.stop()


@pytest.fixture
def ftp_location(ftp_server: FTPServer) -> tuple[str, dict[str, Any]]:
    """A fresh base path on the FTP server, and its storage options."""
    return f"ftp:///state-{uuid.uuid4().hex[:12]}", ftp_server.storage_options
