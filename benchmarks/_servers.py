"""The benchmarks' servers: request-counting servers in processes of their own, and their counts.

Each server runs in its own process (``python -m tests.servers``) so that serving requests
never competes with the measured client for this process's GIL; the server counts what
crossed the wire and :func:`counts` reads the counts over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: s3fs storage options for the moto server (any credentials do).
S3_OPTIONS = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}


@contextmanager
def _counting_server(*argv: str) -> Iterator[str]:
    """``python -m tests.servers ARGV...`` while the block runs: its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.servers", *argv], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving "), f"tests.servers {' '.join(argv)}: {line!r}"
        yield line.split()[1]
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server, counting requests: its endpoint URL."""
    with _counting_server("moto") as endpoint:
        yield endpoint


@contextmanager
def gcs_server() -> Iterator[str]:
    """fake-gcs-server behind the counting proxy: the proxy's URL (the GCS endpoint)."""
    from tests.servers import fake_gcs_server

    server, upstream = fake_gcs_server()
    try:
        with _counting_server("proxy", upstream) as url:
            yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def azure_server() -> Iterator[str]:
    """Azurite's Blob service behind the counting proxy (Azure dialect): the proxy's URL."""
    from tests.servers import azurite

    server, upstream = azurite()
    try:
        with _counting_server("proxy", upstream, "azure") as url:
            yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def counts(url: str) -> dict[str, int]:
    """Requests by kind that reached the server at ``url`` since the last call (it resets its log)."""
    with urllib.request.urlopen(f"{url}/_counts?reset=1") as response:
        return json.loads(response.read())


def s3_client(endpoint: str) -> Any:
    """A boto3 client of the moto server, for set-up and checks (its requests are counted too)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@contextmanager
def statsd_server() -> Iterator[tuple[int, list[int]]]:
    """A StatsD listener (``python -m tests.statsd_listener``) in its own process while the block runs:
    its UDP port, and a list that holds, once the block ended, how many metric lines it received."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.statsd_listener"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    received: list[int] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving udp://"), f"tests.statsd_listener: {line!r}"
        yield int(line.rsplit(":", 1)[1]), received
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
        received += [int(word) for word in out.split()[1:2] if word.isdigit()]
