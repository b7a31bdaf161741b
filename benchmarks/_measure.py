"""How the comparison's sections time calls, report progress and write table cells."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

_STARTED = time.monotonic()


def log(message: str) -> None:
    """Progress, on stderr (stdout carries only the tables)."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def timed(call: Callable[[], Any]) -> float:
    """Seconds ``call()`` took."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def requests_cell(by_kind: dict[str, float]) -> str:
    """Requests by kind as a table cell: ``3 (GET 1, PUT 2)``."""
    shown = ", ".join(f"{kind} {n:g}" for kind, n in sorted(by_kind.items()))
    return f"{sum(by_kind.values()):g} ({shown})" if shown else "0"


def ratio(ours: float, other: float) -> str:
    """``ours / other`` as a table cell: below 1, ours takes less."""
    return f"{ours / other:.2f}" if other else "-"
