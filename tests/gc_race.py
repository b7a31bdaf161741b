"""The GC race, forced: a writer rewrites a key after the GC checked it and before it deletes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.gc import GCOptions, GCReport, _Sweep, run_gc
from objstore_backend.layout import object_path
from objstore_backend.store import ObjectMetadata


def gc_racing_a_rewrite(backend: ObjectStoreBackend, scope: Any, key: str, options: GCOptions) -> GCReport:
    """Run the GC once; just before its delete, ``key`` is rewritten with ``"new"`` and a live expiry."""
    original_delete = _Sweep.delete

    async def rewrite_then_delete(self: _Sweep, fs: Any, due: list[Any]) -> set[str]:
        live = ObjectMetadata("primary", datetime.now(timezone.utc) + timedelta(days=1))
        await self.store.awrite(object_path(scope, key), b'"new"', live)
        return await original_delete(self, fs, due)

    _Sweep.delete = rewrite_then_delete  # type: ignore[method-assign]
    try:
        return run_gc(backend.store, options)
    finally:
        _Sweep.delete = original_delete  # type: ignore[method-assign]
