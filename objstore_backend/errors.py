"""The errors this package raises, in one place.

Each subclasses the built-in exception a caller would already catch (``FileNotFoundError``,
``PermissionError``, ``ValueError``, ``OSError``) and keeps the store's own error as
``__cause__``. Messages name the object (``store.display_path``: protocol, bucket and key,
never credentials) and the cause; a request that failed after retries says how many attempts
were made.
"""

from __future__ import annotations

__all__ = [
    "BucketNotFoundError",
    "CorruptObjectError",
    "MetadataDBError",
    "RefusedReferenceError",
    "StateObjectMissingError",
    "StoreAccessDenied",
    "StoreError",
    "StoreThrottled",
    "UnguardedStoreError",
]


class StoreError(OSError):
    """An object store request failed for good (after the retries the policy allows)."""


class BucketNotFoundError(StoreError, FileNotFoundError):
    """The base path's bucket does not exist: nothing can be read or written."""


class StateObjectMissingError(StoreError, FileNotFoundError):
    """Airflow holds a reference to a state object that is not in the store."""


class CorruptObjectError(StoreError, ValueError):
    """An object under the base path is not a state object this package wrote."""


class StoreThrottled(StoreError):
    """The store kept throttling the requests (503 SlowDown / ServerBusy, 429) past the retries."""


class StoreAccessDenied(StoreError, PermissionError):
    """The store refused the credentials, or they may not do this (never retried)."""


class RefusedReferenceError(ValueError):
    """A stored reference names another key's object (forged, or copied from another scope): never followed."""


class MetadataDBError(OSError):
    """Airflow's metadata DB could not be read: unreachable, refused, or not an Airflow schema."""


class UnguardedStoreError(ValueError):
    """The filesystem cannot make the GC's deletes or ``import``'s writes conditional: run there,
    they could delete or overwrite a value a writer set meanwhile, so they refuse (a usage error)."""
