"""A stand-in for prom/statsd-exporter, for the dashboard screenshot and its tests only.

No statsd_exporter binary can be installed here (it is in no Debian, PyPI or npm package), so this
listener applies the same mapping file (terraform-example/monitoring/statsd-mapping.yml) the way the
exporter does, for the subset of its format that file uses: regex matches, ``match_metric_type``,
``${n}`` in names and labels, histogram observers with buckets, timers converted from ms to
seconds, the first matching mapping wins. It exposes the result on /metrics in Prometheus's text
format. Lines no mapping matches are counted in ``statsd_bridge_unmapped_lines_total{name=...}``
instead of being exported under an escaped name. Production runs prom/statsd-exporter with the
mapping file (terraform-example/monitoring/README.md).

    python -m tests.statsd_bridge --mapping FILE [--udp-port N] [--http-port N]

prints ``udp=PORT http=PORT`` once both are listening (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# StatsD line types and the mapping's match_metric_type they answer to.
STATSD_TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}
MAPPING_KEYS = {"match", "match_type", "match_metric_type", "name", "labels", "observer_type", "histogram_options"}
LabelSet = tuple[tuple[str, str], ...]


@dataclass
class Mapping:
    pattern: re.Pattern[str]
    metric_type: str
    name: str
    labels: dict[str, str]
    buckets: list[float]


def load_mappings(path: Path) -> list[Mapping]:
    """The mapping file's rules, refusing any option this stand-in would silently ignore."""
    mappings = []
    for number, rule in enumerate(yaml.safe_load(path.read_text())["mappings"], 1):
        unknown = set(rule) - MAPPING_KEYS
        if unknown or rule.get("match_type") != "regex" or rule.get("observer_type", "histogram") != "histogram":
            raise SystemExit(f"{path}: mapping {number} uses options this stand-in does not apply: {sorted(rule)}")
        buckets = [float(b) for b in rule.get("histogram_options", {}).get("buckets", [])]
        mappings.append(
            Mapping(re.compile(rule["match"]), rule["match_metric_type"], rule["name"], rule.get("labels", {}), buckets)
        )
    return mappings


def expand(template: str, match: re.Match[str]) -> str:
    """Go's regexp.Expand for ``${n}`` / ``$n``, as the exporter fills names and labels."""
    return re.sub(r"\$\{(\d+)\}|\$(\d+)", lambda m: match.group(int(m.group(1) or m.group(2))), template)


@dataclass
class Registry:
    """The exported series: counters and gauges by (name, labels), histograms with their buckets."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    types: dict[str, str] = field(default_factory=dict)
    values: dict[tuple[str, LabelSet], float] = field(default_factory=dict)
    histograms: dict[tuple[str, LabelSet], tuple[list[float], list[int], list[float]]] = field(default_factory=dict)

    def apply(self, mappings: list[Mapping], line: str) -> None:
        stat, _, rest = line.partition(":")
        value_text, _, statsd_type = rest.partition("|")
        statsd_type = statsd_type.split("|")[0]
        if statsd_type not in STATSD_TYPES:
            return
        value = float(value_text)
        for mapping in mappings:
            match = mapping.pattern.fullmatch(stat)
            if match and mapping.metric_type == STATSD_TYPES[statsd_type]:
                name = expand(mapping.name, match)
                labels = tuple(sorted((k, expand(v, match)) for k, v in mapping.labels.items()))
                self.record(
                    name, labels, statsd_type, value_text, value / 1000 if statsd_type == "ms" else value, mapping
                )
                return
        self.record("statsd_bridge_unmapped_lines_total", (("name", stat),), "c", "1", 1.0, None)

    def record(
        self, name: str, labels: LabelSet, statsd_type: str, text: str, value: float, mapping: Mapping | None
    ) -> None:
        key = (name, labels)
        with self.lock:
            if statsd_type == "c":
                self.types[name] = "counter"
                self.values[key] = self.values.get(key, 0.0) + value
            elif statsd_type == "g":
                self.types[name] = "gauge"
                relative = text[:1] in "+-"
                self.values[key] = self.values.get(key, 0.0) + value if relative else value
            else:
                assert mapping is not None
                self.types[name] = "histogram"
                bounds, counts, total = self.histograms.setdefault(
                    key, (mapping.buckets, [0] * len(mapping.buckets), [0.0, 0.0])
                )
                for i, bound in enumerate(bounds):
                    if value <= bound:
                        counts[i] += 1
                total[0] += value
                total[1] += 1

    def exposition(self) -> str:
        """Prometheus's text format (0.0.4) of every series."""
        lines = []
        with self.lock:
            for name, kind in sorted(self.types.items()):
                lines.append(f"# TYPE {name} {kind}")
                for (series, labels), value in sorted(self.values.items()):
                    if series == name:
                        lines.append(f"{name}{format_labels(labels)} {value!r}")
                for (series, labels), (bounds, counts, total) in sorted(self.histograms.items()):
                    if series == name:
                        for bound, count in [*zip(bounds, counts, strict=True), (math.inf, int(total[1]))]:
                            le = "+Inf" if bound == math.inf else repr(bound)
                            lines.append(f"{name}_bucket{format_labels((*labels, ('le', le)))} {count}")
                        lines.append(f"{name}_sum{format_labels(labels)} {total[0]!r}")
                        lines.append(f"{name}_count{format_labels(labels)} {int(total[1])}")
        return "\n".join(lines) + "\n"


def format_labels(labels: LabelSet) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + ",".join(escaped) + "}"


def serve(registry: Registry, http_port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = registry.exposition().encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
            """Quiet: Prometheus scrapes every second."""

    server = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapping", type=Path, required=True)
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    args = parser.parse_args()
    mappings = load_mappings(args.mapping)
    registry = Registry()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", args.udp_port))
    server = serve(registry, args.http_port)
    print(f"udp={udp.getsockname()[1]} http={server.server_address[1]}", flush=True)
    while True:
        packet = udp.recv(65535).decode()
        for line in packet.splitlines():
            if line.strip():
                try:
                    registry.apply(mappings, line.strip())
                except ValueError:
                    print(f"statsd_bridge: not a StatsD line: {line!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
