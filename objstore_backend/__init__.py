"""Apache Airflow task and asset state in object storage (S3, GCS, any fsspec filesystem).

``objstore_backend.ObjectStoreBackend`` is the class to name in Airflow's config. It is
imported on first use, so the GC and audit commands run without Airflow installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ObjectStoreBackend", "__version__"]

if TYPE_CHECKING:
    from objstore_backend.backend import ObjectStoreBackend


def __getattr__(name: str) -> Any:
    if name == "ObjectStoreBackend":
        from objstore_backend.backend import ObjectStoreBackend

        return ObjectStoreBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
