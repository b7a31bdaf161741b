"""Values written by the common.io provider's state store backend (1.11), read without Airflow.

Its worker hooks store ``{"__airflow_state_ref__": REF}`` where REF is either the full path of
the object it wrote (``s3://conn@bucket/base/dag/run/task/-1/key``, ``.gz`` or another fsspec
suffix when ``state_store_objectstorage_compression`` is set) or, under its threshold, the
JSON text itself. Its settings live in ``[common.io] state_store_objectstorage_*``: taken
from flags, else ``AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH``, else airflow.cfg.
Only paths under that base are read: a reference elsewhere (another bucket, another prefix)
is refused and named, never followed.
"""

from __future__ import annotations

import io
import lzma
import posixpath
import zipfile
import zlib
from typing import Any
from urllib.parse import urlsplit

import fsspec
import fsspec.compression
from fsspec.core import split_protocol
from fsspec.utils import infer_compression

from objstore_backend.config import StoreSettings, airflow_section, split_connection_id
from objstore_backend.errors import StoreError
from objstore_backend.transports.base import describe_cause

__all__ = ["CommonIOSource", "commonio_path_from_airflow", "is_path_ref"]

SECTION = "common.io"
PATH_KEY = "state_store_objectstorage_path"

_FAMILIES = {"s3a": "s3", "gcs": "gs", "local": "file"}


def commonio_path_from_airflow(environ: dict[str, str] | None = None) -> str | None:
    """``[common.io] state_store_objectstorage_path`` from the env var, else ``$AIRFLOW_HOME/airflow.cfg``."""
    setting = airflow_section(SECTION, environ).get(PATH_KEY)
    return setting.value if setting and setting.value else None


def _where(url: str) -> tuple[str, str]:
    """(protocol family, path without protocol or connection id) of a URL or local path."""
    protocol, path = split_protocol(split_connection_id(url)[1])
    family = _FAMILIES.get(protocol or "file", protocol or "file")
    return family, path.rstrip("/")


class CommonIOSource:
    """Reads the objects common.io's references point at, under its configured base only."""

    def __init__(self, base_path: str, storage_options: dict[str, Any] | None = None) -> None:
        self.base_path = base_path
        url, options = StoreSettings(path=base_path, storage_options=storage_options or {}).resolve()
        protocol = split_protocol(url)[0] or "file"
        if protocol in ("s3", "s3a", "gs", "gcs"):  # a fresh view of the bucket, never a cached listing
            options = {"skip_instance_cache": True, "use_listings_cache": False, **options}
        self._fs = fsspec.filesystem(protocol, **options)
        self._family, self._base = _where(base_path)
        self._root = self._fs._strip_protocol(url).rstrip("/")

    def relative(self, ref: str) -> str:
        """The path of ``ref`` under the base; ``ValueError`` naming it when it lies elsewhere."""
        family, path = _where(ref)
        prefix = self._base + "/"
        relative = path[len(prefix) :] if family == self._family and path.startswith(prefix) else ""
        if not relative or posixpath.normpath(relative) != relative or relative.startswith(".."):
            raise ValueError(
                f"the common.io reference {ref!r} is outside its configured base {self.base_path!r} "
                "(another bucket or prefix): not followed"
            )
        return relative

    def read(self, ref: str) -> bytes | None:
        """The value (decompressed by its suffix, as common.io reads it) or ``None`` if missing.

        The object is read whole, then decompressed: a store that fails is a :class:`StoreError`,
        a body that is not what its suffix says (not gzip, cut short) a ``ValueError``, each naming ``ref``.
        """
        path = f"{self._root}/{self.relative(ref)}"
        try:
            data: bytes = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"reading the common.io object {ref} failed: {describe_cause(exc)}") from exc
        compression = infer_compression(path)
        if compression is None:
            return data
        try:
            with fsspec.compression.compr[compression](io.BytesIO(data), mode="rb") as handle:
                decompressed: bytes = handle.read()
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"the common.io object {ref} is damaged: not a whole {compression} stream ({describe_cause(exc)})"
            ) from None
        return decompressed


def is_path_ref(ref: str) -> bool:
    """Whether a common.io reference names an object (it has a URL scheme) or is the JSON text itself."""
    return bool(urlsplit(ref).scheme)
