"""Real servers for the tests: moto's S3 server behind a request-counting WSGI layer.

Counting happens on the server side, so the counts are the requests that really crossed the
wire (retries included), whatever the client library does.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class CountingMotoServer:
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

    def start(self) -> CountingMotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


class CountingProxy:
    """A reverse proxy on a free loopback port in front of a server (the GCS emulator).

    Logs every request like :class:`CountingMotoServer`, and lets a test answer chosen
    requests itself: ``respond`` is called with ``(method, path, query, body)`` and returns
    ``None`` to forward, or ``(status, headers, body)`` to answer instead (an injected fault).
    """

    def __init__(self, upstream: str) -> None:
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.log = RequestLog()
        self.respond: Callable[[str, str, str, bytes], tuple[int, dict[str, str], bytes] | None] | None = None
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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

            def _relay(self) -> None:
                path, _, query = self.path.partition("?")
                body = self._body()
                proxy.log.record(self.command, path, query)
                answer = proxy.respond(self.command, path, query, body) if proxy.respond else None
                if answer is None:
                    connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    answer = (response.status, dict(response.getheaders()), response.read())
                    connection.close()
                status, headers, payload = answer
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _relay

        return Handler

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


if __name__ == "__main__":  # python -m tests.servers PORT: a counting moto server in its own process
    served = CountingMotoServer(int(sys.argv[1])).start()
    print(f"serving {served.endpoint_url}", flush=True)
    served._thread.join()
