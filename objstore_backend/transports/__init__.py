"""The transports: the requests of one protocol family each, one module per store.

* :mod:`~objstore_backend.transports.base`: the :class:`Transport` ABC, the retry policy and
  error translation every transport shares;
* :mod:`~objstore_backend.transports.s3` (``s3://``), :mod:`~objstore_backend.transports.gcs`
  (``gs://``), :mod:`~objstore_backend.transports.azure` (``abfs://``, ``abfss://``, ``az://``);
* :mod:`~objstore_backend.transports.local`: the local disk, memory, and the metadata envelope
  for any other fsspec filesystem.

:func:`transport_for` picks the class for a URL's protocol.
"""

from __future__ import annotations

from objstore_backend.transports.base import CHANGED, GONE, ListedObject, RetryPolicy, Transport
from objstore_backend.transports.gcs import GCSTransport
from objstore_backend.transports.local import EnvelopeTransport, LocalTransport, MemoryTransport
from objstore_backend.transports.s3 import S3Transport

__all__ = [
    "AZURE_PROTOCOLS",
    "CHANGED",
    "GONE",
    "GUARDED_STORES",
    "EnvelopeTransport",
    "GCSTransport",
    "ListedObject",
    "LocalTransport",
    "MemoryTransport",
    "RetryPolicy",
    "S3Transport",
    "Transport",
    "transport_for",
]

#: Azure Blob Storage's protocols: its module is imported only for them (its SDK is an optional extra).
AZURE_PROTOCOLS = ("abfs", "abfss", "az")

_TRANSPORTS: dict[str, type[Transport]] = {
    "s3": S3Transport,
    "s3a": S3Transport,
    "gs": GCSTransport,
    "gcs": GCSTransport,
    "file": LocalTransport,
    "local": LocalTransport,
    "memory": MemoryTransport,
}

#: Where deletes and create-only writes can be made conditional (every transport but the bare envelope's).
GUARDED_STORES = "s3://, gs://, abfs:// (abfss://, az://), local paths and memory://"


def transport_for(protocol: str) -> type[Transport]:
    """The transport class for a URL's protocol; the metadata envelope for any other filesystem."""
    if protocol in AZURE_PROTOCOLS:
        from objstore_backend.transports.azure import AzureTransport

        return AzureTransport
    return _TRANSPORTS.get(protocol, EnvelopeTransport)
