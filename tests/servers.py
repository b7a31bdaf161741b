"""Real servers for the tests: moto's S3 server behind a request-counting WSGI layer, and a
counting, fault-injecting reverse proxy (in front of the GCS emulator, and of moto).

Counting happens on the server side, so the counts are the requests that really crossed the
wire (retries included), whatever the client library does. The proxy answers chosen requests
(by predicate, or a seeded share of them) with 503 SlowDown, 500, 429, a reset connection, a
stall past the client's timeout, or a truncated answer: see :data:`FAULT_KINDS`.
"""

from __future__ import annotations

import http.client
import io
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class RequestLog:
    """What reached the server: one entry per request, as ``(method, path, query)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []
        self.bodies: list[bytes] = []  # of batch deletes

    def record(self, method: str, path: str, query: str) -> None:
        with self._lock:
            self.requests.append((method, path, query))

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
        """Requests by S3 operation-ish kind: ``GET``, ``PUT``, ``LIST``, ``DELETE``, ``BATCH-DELETE``..."""
        kinds: Counter[str] = Counter()
        for method, path, query in self.snapshot():
            if method == "GET" and ("list-type" in query or path.count("/") <= 1 and "prefix" in query):
                kinds["LIST"] += 1
            elif method == "POST" and "delete" in query:
                kinds["BATCH-DELETE"] += 1
            else:
                kinds[method] += 1
        return kinds


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
            if path == "/_counts":  # for a server in another process (the benchmarks)
                start_response("200 OK", [("Content-Type", "application/json")])
                counts = self.log.by_kind()
                if "reset" in query:
                    self.log.clear()
                return [json.dumps(counts).encode()]
            if not path.startswith("/moto-api"):
                self.log.record(environ["REQUEST_METHOD"], path, query)
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

    ``dialect`` (``"s3"`` or ``"gcs"``) shapes the error bodies. ``serialize=True`` relays one
    request at a time, in arrival order, so a request whose client gave up (a stall) has taken
    effect before the next one is relayed: what a failed call may have left is settled before
    the next call starts, and a test's model of the store can stay exact.
    """

    def __init__(self, upstream: str, *, dialect: str = "gcs", stall_seconds: float = 2.0) -> None:
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.dialect = dialect
        self.stall_seconds = stall_seconds
        self.serialize = False
        self.log = RequestLog()
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
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = ProxiedRequest(self.command, path, query, headers, body)
                proxy.log.record(self.command, path, query)
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


if __name__ == "__main__":  # python -m tests.servers PORT: a counting moto server in its own process
    served = CountingMotoServer(int(sys.argv[1])).start()
    print(f"serving {served.endpoint_url}", flush=True)
    served._thread.join()
