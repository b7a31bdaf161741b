"""The store's metrics: each backend operation counted, timed, its bytes, errors and retries.

Names, relative to ``<prefix>.objstore_backend.`` (see :mod:`objstore_backend.metrics`), all tagged
``mode`` (``offload`` or ``primary``), for ``<op>`` in ``get``, ``set``, ``delete``, ``clear``:

* ``store.<op>``: one per call; ``store.<op>.duration``: its milliseconds;
* ``store.<op>.bytes``: body bytes read (``get``) or written (``set``), as stored (compressed);
* ``store.<op>.errors``, tagged ``kind`` too: ``missing`` (bucket or referenced object),
  ``corrupt``, ``throttled`` (still throttled after the retries), ``other``;
* ``store.<op>.retries``: the retries the store's :class:`~objstore_backend.transports.base.RetryPolicy` made.

The requests of an operation report their retries and bytes to the :class:`OperationTally` of the
operation running in their context (:func:`note_retry`, :func:`note_read`, :func:`note_written`),
so an async operation's requests, or a sync one's run on fsspec's loop, land on the right call.
With metrics off nothing is timed or tallied: the operation runs as it is.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast

from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StateObjectMissingError, StoreThrottled
from objstore_backend.metrics import Metrics, for_process

__all__ = ["OperationTally", "error_kind", "measured", "note_read", "note_retry", "note_written"]

Operation = Literal["get", "set", "delete", "clear"]
Mode = Literal["offload", "primary"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(slots=True)
class OperationTally:
    """What one operation's requests did: retries the policy made, body bytes read and written."""

    retries: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


_TALLY: ContextVar[OperationTally | None] = ContextVar("objstore_backend_operation_tally", default=None)


def note_retry() -> None:
    """A request of the running operation is tried again."""
    tally = _TALLY.get()
    if tally is not None:
        tally.retries += 1


def note_read(size: int) -> None:
    """The running operation read an object body of ``size`` bytes."""
    tally = _TALLY.get()
    if tally is not None:
        tally.bytes_read += size


def note_written(size: int) -> None:
    """The running operation wrote an object body of ``size`` bytes."""
    tally = _TALLY.get()
    if tally is not None:
        tally.bytes_written += size


def error_kind(exc: BaseException) -> str:
    """The ``kind`` tag of a failed operation's error."""
    if isinstance(exc, (BucketNotFoundError, StateObjectMissingError)):
        return "missing"
    if isinstance(exc, CorruptObjectError):
        return "corrupt"
    if isinstance(exc, StoreThrottled):
        return "throttled"
    return "other"


class _Measuring:
    """Around one operation: tallies its requests, then reports it; the outcome passes unchanged."""

    __slots__ = ("metrics", "mode", "operation", "started", "tally", "token")

    def __init__(self, metrics: Metrics, operation: Operation, mode: Mode) -> None:
        self.metrics, self.operation, self.mode = metrics, operation, mode

    def __enter__(self) -> None:
        self.tally = OperationTally()
        self.token = _TALLY.set(self.tally)
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        _TALLY.reset(self.token)
        stat, tags, tally = f"store.{self.operation}", {"mode": self.mode}, self.tally
        self.metrics.incr(stat, tags=tags)
        self.metrics.timing(f"{stat}.duration", elapsed_ms, tags=tags)
        moved = tally.bytes_read if self.operation == "get" else tally.bytes_written if self.operation == "set" else 0
        if moved:
            self.metrics.incr(f"{stat}.bytes", moved, tags=tags)
        if tally.retries:
            self.metrics.incr(f"{stat}.retries", tally.retries, tags=tags)
        if exc is not None:
            self.metrics.incr(f"{stat}.errors", tags={**tags, "kind": error_kind(exc)})


def _reporting_to(backend: Any) -> Metrics | None:
    """Where ``backend`` reports, ``None`` with metrics off (the base class reports nowhere)."""
    metrics: Metrics = backend.metrics if backend.metrics is not None else for_process()
    return None if type(metrics) is Metrics else metrics


def measured(operation: Operation, mode: Mode) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """Report each call of the decorated backend method (sync or async; its ``self`` has ``metrics``)
    as ``operation`` in ``mode``."""

    def decorate(method: Callable[_P, _T]) -> Callable[_P, _T]:
        if inspect.iscoroutinefunction(method):
            coroutine = cast(Callable[_P, Awaitable[Any]], method)

            @functools.wraps(method)
            async def measured_coroutine(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                metrics = _reporting_to(args[0])
                if metrics is None:
                    return await coroutine(*args, **kwargs)
                with _Measuring(metrics, operation, mode):
                    return await coroutine(*args, **kwargs)

            return cast(Callable[_P, _T], measured_coroutine)

        @functools.wraps(method)
        def measured_call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            metrics = _reporting_to(args[0])
            if metrics is None:
                return method(*args, **kwargs)
            with _Measuring(metrics, operation, mode):
                return method(*args, **kwargs)

        return measured_call

    return decorate
