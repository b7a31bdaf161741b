"""A StatsD server for tests: a real UDP socket on a free loopback port, every metric it received.

As Airflow's own tests of its StatsD logger do, the metrics go over real UDP; the listener parses
each line of each datagram (``name:value|type[|@rate][|#tag:value,...]``, several lines per
datagram when the client batches) and keeps them in arrival order. The ``statsd_listener`` fixture
(tests/conftest.py) gives each test one.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["StatsdListener", "StatsdMetric"]


@dataclass(frozen=True)
class StatsdMetric:
    """One metric line: name, value, type (``c`` counter, ``g`` gauge, ``ms`` timer), DogStatsD tags."""

    name: str
    value: float
    type: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> StatsdMetric:
        name, _, rest = line.partition(":")
        value, kind, *extras = rest.split("|")
        tags = {}
        for extra in extras:
            if extra.startswith("#"):
                tags = dict(tag.partition(":")[::2] for tag in extra[1:].split(","))
        return cls(name, float(value), kind, tags)


class StatsdListener:
    """Receives StatsD datagrams on ``127.0.0.1:<port>`` until stopped."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.host, self.port = self._socket.getsockname()
        self._lines: list[str] = []
        self._taken = 0  # how many of them lines() has handed out
        self._last_arrival = time.monotonic()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def start(self) -> StatsdListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def _receive(self) -> None:
        while not self._stopping.is_set():
            try:
                datagram = self._socket.recv(65535)
            except TimeoutError:
                continue
            with self._lock:
                self._lines += [line for line in datagram.decode().splitlines() if line]
                self._last_arrival = time.monotonic()

    def metrics(self) -> list[StatsdMetric]:
        """What arrived so far, in order."""
        with self._lock:
            return [StatsdMetric.parse(line) for line in self._lines]

    def lines(self, quiet: float = 0.3) -> list[str]:
        """The lines, as sent, that arrived since the last call, once none arrived for ``quiet``
        seconds (the senders have exited: what they sent is in flight or in the socket's buffer)."""
        called = time.monotonic()
        while True:
            with self._lock:
                remaining = max(self._last_arrival, called) + quiet - time.monotonic()
                if remaining <= 0:
                    taken, self._taken = self._lines[self._taken :], len(self._lines)
                    return taken
            time.sleep(remaining)

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
            self._taken = 0

    def counters(self, prefix: str = "") -> Counter[str]:
        """The sum of each counter whose name starts with ``prefix``, by name (the prefix cut off)."""
        totals: Counter[str] = Counter()
        for metric in self.metrics():
            if metric.type == "c" and metric.name.startswith(prefix):
                totals[metric.name[len(prefix) :]] += int(metric.value)
        return totals

    def timers(self, prefix: str = "") -> Counter[str]:
        """How many timings arrived of each timer whose name starts with ``prefix``, by name."""
        return Counter(m.name[len(prefix) :] for m in self.metrics() if m.type == "ms" and m.name.startswith(prefix))

    def wait_until(self, condition: Callable[[StatsdListener], bool], timeout: float = 10.0) -> None:
        """Wait for UDP to deliver what ``condition`` looks for; fail naming what did arrive."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout} s; received: {self.metrics()}")
            time.sleep(0.02)


def _serve() -> None:
    """``python -m tests.statsd_listener``: listen in a process of its own (the benchmarks' way, so
    receiving never competes with the measured client); print ``serving udp://HOST:PORT``, and on
    SIGTERM ``received N`` (metric lines)."""
    listener = StatsdListener().start()

    def finish(*_: object) -> None:
        listener.stop()
        print(f"received {len(listener.metrics())}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    print(f"serving udp://{listener.host}:{listener.port}", flush=True)
    signal.pause()


if __name__ == "__main__":
    _serve()
