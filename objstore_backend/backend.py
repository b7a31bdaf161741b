"""The Airflow adapter: one class for both deployment modes.

* **offload** (``[workers] state_store_backend = objstore_backend.ObjectStoreBackend``): the
  task process calls the ``serialize_*_to_ref`` / ``deserialize_*_from_ref`` hooks; the
  value goes to the bucket, Airflow's DB keeps a reference and its own expiry. Offload
  objects carry no expiry: Airflow does not tell the hook the retention, and guessing one
  would delete ``NEVER_EXPIRE`` values the DB still points at.
* **primary** (``[state_store] backend = objstore_backend.ObjectStoreBackend``): the API
  server calls ``get``/``set``/``delete``/``clear``; the value and its ``expires_at`` live in
  the bucket and nothing in the DB.

This is the only module that imports Airflow.
"""

from __future__ import annotations

import importlib
import logging
import sys
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from airflow.sdk.state import BaseStoreBackend as _SdkBase

from objstore_backend.codec import compress, decode_json, encode_json, validate_json_text
from objstore_backend.config import KEYS, SECTION, StoreSettings
from objstore_backend.errors import RefusedReferenceError, StateObjectMissingError, StoreError
from objstore_backend.layout import ScopeKind, object_path, parse, recorded_key, scope_prefix
from objstore_backend.metrics import Metrics
from objstore_backend.refs import reference_refusal
from objstore_backend.store import ObjectMetadata, ObjectStore, StoredObject, damage_named, json_text
from objstore_backend.store_metrics import measured

if TYPE_CHECKING:
    import fsspec

__all__ = [
    "INLINE_REF_PREFIX",
    "OBJECT_REF_PREFIX",
    "ObjectStoreBackend",
    "is_live_in_primary",
    "settings_from_airflow",
]

logger = logging.getLogger(__name__)

#: A reference to an object, relative to the base path, so a bucket can move.
OBJECT_REF_PREFIX = "objstore:"
#: A value under ``threshold_bytes``, kept in the DB reference itself.
INLINE_REF_PREFIX = "inline:"
_WRAPPED_REF_KEY = "__airflow_state_ref__"
_WRAPPED_REF_START = b'{"' + _WRAPPED_REF_KEY.encode()


def _base_classes() -> tuple[type, ...]:
    """The server side only accepts subclasses of the core ABC; workers use the SDK's copy."""
    try:
        from airflow.state import BaseStoreBackend as core_base
    except ImportError:  # a worker image with the task SDK alone
        return (_SdkBase,)
    sdk_base: type = _SdkBase
    return (sdk_base,) if core_base is sdk_base else (core_base, sdk_base)


def _airflow_conf() -> Any:
    """Airflow's config: the core one where installed, else the task SDK's."""
    try:
        return importlib.import_module("airflow.configuration").conf
    except ImportError:
        return importlib.import_module("airflow.sdk.configuration").conf


def settings_from_airflow() -> StoreSettings:
    """Read ``[objstore_backend]`` from Airflow's config (airflow.cfg or env vars)."""
    conf = _airflow_conf()
    return StoreSettings.from_mapping({key: conf.get(SECTION, key, fallback="") for key in KEYS})


def _adopted(expires_at: datetime | None, source: str, path: str, key: str) -> ObjectMetadata:
    """An object the server adopted from the worker: Airflow's expiry, and the GC's to collect.

    A copy at another path (an asset key, by id) records the worker's path it came from: the
    worker follows the server's reference to it only when that is its own asset's object.
    """
    origin = source if source != path else None
    return ObjectMetadata(
        "offload",
        expires_at,
        adopted=True,
        updated_at=datetime.now(timezone.utc),
        key=recorded_key(key),
        origin=origin,
    )


#: The module of Airflow's task-side accessors, the callers of ``deserialize_*_from_ref``.
_ACCESSORS_MODULE = "airflow.sdk.execution_time.context"


def _reading_accessor() -> tuple[Any, str] | None:
    """The (scope, key) an Airflow accessor is reading a reference for; ``None`` outside Airflow.

    Airflow 3.3 and 3.4 hand ``deserialize_*_from_ref`` the reference alone, not the scope and
    key it was stored under, so a forged row (``objstore:`` naming another DAG's object) would be
    followed. The accessor that calls the hook knows both: ``TaskStateStoreAccessor.get`` (task
    SDK 1.3) or ``._extract_get_response`` (1.4) hold ``self._scope`` and ``key``;
    ``AssetStateStoreAccessor._extract_get_response`` holds ``self._name`` / ``self._uri`` and
    ``key``. They are found on the call stack, nearest first. Called from that module with
    neither at hand (an Airflow that changed), it fails closed; a plain Python caller, with no
    accessor on the stack, already holds the bucket and gets no check.
    """
    frame = sys._getframe(1)
    try:
        while frame is not None and frame.f_globals.get("__name__") != _ACCESSORS_MODULE:
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        module = sys.modules[_ACCESSORS_MODULE]
        accessor, key = frame.f_locals.get("self"), frame.f_locals.get("key")
        if isinstance(key, str) and isinstance(accessor, module.TaskStateStoreAccessor):
            return accessor._scope, key
        if isinstance(key, str) and isinstance(accessor, module.AssetStateStoreAccessor):
            return SimpleNamespace(name=accessor._name, uri=accessor._uri), key
        raise RefusedReferenceError(
            f"Airflow's {frame.f_code.co_name}() asked for a state reference without the accessor's scope "
            "and key at hand: refused, as the reference could not be checked against the key it is stored under"
        )
    finally:
        del frame


def is_live_in_primary(metadata: ObjectMetadata) -> bool:
    """Whether the API server may answer this object: primary-mode, or adopted from a worker."""
    return metadata.mode == "primary" or metadata.adopted


class ObjectStoreBackend(*_base_classes()):  # type: ignore[misc]
    """Airflow task and asset state in object storage, one JSON object per key.

    Airflow constructs it with no arguments: the settings then come from airflow.cfg, and each
    operation reports to the process's metrics (Airflow's ``[metrics]``, see
    :mod:`objstore_backend.store_metrics`). Pass :class:`~objstore_backend.config.StoreSettings`
    (and optionally a ready fsspec ``filesystem``, or the ``metrics`` to report to) to construct
    it in plain Python.
    """

    def __init__(
        self,
        settings: StoreSettings | None = None,
        *,
        filesystem: fsspec.AbstractFileSystem | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings if settings is not None else settings_from_airflow()
        url, options = self.settings.resolve() if filesystem is None else (self.settings.path, {})
        self.store = ObjectStore(url, options, filesystem=filesystem)
        #: where the operations report; ``None``: the process's (looked up per call, built once)
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store.url!r})"

    # -- primary mode: the API server's calls ------------------------------------------

    def _worker_object(self, body: bytes, path: str) -> str | None:
        """The path of the worker's object, if ``body`` may be the worker's reference for ``path``.

        With the same class on both sides, the server's ``set`` is handed the worker's wrapped
        reference for the same key: a task key at the very same path, an asset key under
        ``asset/name/`` or ``asset/uri/`` while the server's scope is ``asset/id/``. Anything
        else shaped like a reference is a plain value. Whether the worker really wrote it is
        settled by :meth:`ObjectStore.adopt`, which adopts offload-mode objects only.
        """
        source = self._own_ref(body) if body.startswith(_WRAPPED_REF_START) else None
        target, referenced = parse(path), parse(source) if source is not None else None
        if source is None or target is None or referenced is None or referenced.key != target.key:
            return None
        if target.kind is ScopeKind.TASK:
            return source if source == path else None
        return source if referenced.kind is not ScopeKind.TASK else None

    @staticmethod
    def _own_ref(body: bytes) -> str | None:
        document = decode_json(body)
        ref = document.get(_WRAPPED_REF_KEY) if isinstance(document, dict) and len(document) == 1 else None
        if isinstance(ref, str) and ref.startswith(OBJECT_REF_PREFIX):
            return ref[len(OBJECT_REF_PREFIX) :]
        return None

    def _primary_answer(self, path: str, found: StoredObject | None) -> str | None:
        """What a ``get`` returns for the object read: expired means gone, damaged says so.

        An offload-mode object the server never adopted is not live here: after a switch from
        offload mode, only what ``import`` brought over (or a worker's set adopted) is; the rest
        (its DB row expired or dropped by Airflow) is dead and waits for the GC.
        """
        if found is None or found.metadata.is_expired() or not is_live_in_primary(found.metadata):
            return None
        return json_text(found.body, self.store.display_path(path))

    @measured("get", "primary")
    def get(self, scope: Any, key: str, *, session: Any = None) -> str | None:
        # docstring inherited
        path = object_path(scope, key)
        return self._primary_answer(path, self._adopted_as_ref(path, self.store.read(path)))

    def _primary_object(self, body: bytes, expires_at: datetime | None, key: str) -> tuple[bytes, ObjectMetadata]:
        """The stored body and metadata of a value kept as it is."""
        metadata = ObjectMetadata("primary", expires_at, updated_at=datetime.now(timezone.utc), key=recorded_key(key))
        return compress(body, self.settings.compression), metadata

    @measured("set", "primary")
    def set(self, scope: Any, key: str, value: str, *, expires_at: datetime | None = None, session: Any = None) -> None:
        # docstring inherited
        path, body = object_path(scope, key), validate_json_text(value)
        source = self._worker_object(body, path)
        if source is None or not self.store.adopt(source, path, _adopted(expires_at, source, path, key)):
            self.store.write(path, *self._primary_object(body, expires_at, key))

    @measured("delete", "primary")
    def delete(self, scope: Any, key: str, *, session: Any = None) -> None:
        # docstring inherited
        self.store.delete(object_path(scope, key))

    @measured("clear", "primary")
    def clear(self, scope: Any, *, all_map_indices: bool = False, session: Any = None) -> None:
        # docstring inherited
        self.store.clear_prefix(scope_prefix(scope, all_map_indices=all_map_indices))

    @measured("get", "primary")
    async def aget(self, scope: Any, key: str, *, session: Any = None) -> str | None:
        # docstring inherited
        path = object_path(scope, key)
        return self._primary_answer(path, self._adopted_as_ref(path, await self.store.aread(path)))

    @measured("set", "primary")
    async def aset(
        self, scope: Any, key: str, value: str, *, expires_at: datetime | None = None, session: Any = None
    ) -> None:
        # docstring inherited
        path, body = object_path(scope, key), validate_json_text(value)
        source = self._worker_object(body, path)
        if source is None or not await self.store.aadopt(source, path, _adopted(expires_at, source, path, key)):
            await self.store.awrite(path, *self._primary_object(body, expires_at, key))

    @measured("set", "primary")
    async def awrite_value(self, scope: Any, key: str, value: str, *, expires_at: datetime | None) -> None:
        """Store ``value`` as it is, never adopting: a value shaped like a worker's reference that
        someone typed (the plugin's PUT) must not copy another asset's or task's object in."""
        await self.store.awrite(
            object_path(scope, key), *self._primary_object(validate_json_text(value), expires_at, key)
        )

    @measured("delete", "primary")
    async def adelete(self, scope: Any, key: str, *, session: Any = None) -> None:
        # docstring inherited
        await self.store.adelete(object_path(scope, key))

    @measured("clear", "primary")
    async def aclear(self, scope: Any, *, all_map_indices: bool = False, session: Any = None) -> None:
        # docstring inherited
        await self.store.aclear_prefix(scope_prefix(scope, all_map_indices=all_map_indices))

    def cleanup(self) -> None:
        """Run one GC sweep with this backend's settings: expired primary-mode objects go.

        Offload objects are left alone here; the ``objstore-backend gc`` command reclaims them
        when given read access to Airflow's metadata DB.
        """
        from objstore_backend.gc import run_gc

        report = run_gc(self.store)
        if report.errors:
            raise StoreError(f"state store GC of {self.store.url} failed: {'; '.join(report.error_samples)}")

    # -- both modes at once: the server adopts the worker's object -----------------------

    def _adopted_as_ref(self, path: str, found: StoredObject | None) -> StoredObject | None:
        """An adopted object answers with a reference to itself, which the worker resolves."""
        if found is None or not found.metadata.adopted:
            return found
        wrapped = encode_json({_WRAPPED_REF_KEY: OBJECT_REF_PREFIX + path})
        return StoredObject(wrapped, found.metadata)

    # -- offload mode: the worker's hooks ---------------------------------------------------

    @measured("set", "offload")
    def _to_ref(self, value: Any, key: str, scope: Any) -> str:
        body = encode_json(value)
        if len(body) < self.settings.threshold_bytes:
            return INLINE_REF_PREFIX + body.decode("utf-8")
        path = object_path(scope, key)
        self.store.write(
            path,
            compress(body, self.settings.compression),
            ObjectMetadata("offload", updated_at=datetime.now(timezone.utc), key=recorded_key(key)),
        )
        return OBJECT_REF_PREFIX + path

    @measured("get", "offload")
    def _from_ref(self, stored: str) -> Any:
        """The value behind ``stored``; inside a task, only if it names the accessor's own key's object."""
        if stored.startswith(INLINE_REF_PREFIX):
            return decode_json(stored[len(INLINE_REF_PREFIX) :])
        path = stored[len(OBJECT_REF_PREFIX) :] if stored.startswith(OBJECT_REF_PREFIX) else None
        if path is None or parse(path) is None:
            raise ValueError(f"not a state reference written by objstore-backend: {stored[:200]!r}")
        reader = _reading_accessor()
        found = self.store.read(path)
        if reader is not None:
            origin = found.metadata.origin if found is not None else None
            refusal = reference_refusal(path, *reader, origin=origin)
            if refusal is not None:
                raise RefusedReferenceError(f"Airflow's row for state key {reader[1]!r} is refused: {refusal}")
        if found is None:
            raise StateObjectMissingError(
                f"Airflow references state object {self.store.display_path(path)}, which is missing "
                "(deleted by hand, by a bucket lifecycle rule, or written to another base path)"
            )
        with damage_named(self.store.display_path(path)):
            return decode_json(found.body)

    def serialize_task_state_store_to_ref(self, *, value: Any, key: str, scope: Any) -> str:
        # docstring inherited
        return self._to_ref(value, key, scope)

    def deserialize_task_state_store_from_ref(self, stored: str) -> Any:
        # docstring inherited
        return self._from_ref(stored)

    def serialize_asset_state_store_to_ref(self, *, value: Any, key: str, scope: Any) -> str:
        # docstring inherited
        return self._to_ref(value, key, scope)

    def deserialize_asset_state_store_from_ref(self, stored: str) -> Any:
        # docstring inherited
        return self._from_ref(stored)
