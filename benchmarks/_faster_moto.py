"""moto's S3 server made fast enough for a million keys and a thousand requests in flight: the same answers.

Three costs of moto (5.2) that S3 does not have, each replaced by a faster way to the same result:

* every ListObjectsV2 page copies the whole bucket, filters it and sorts it
  (``S3Backend.list_objects`` / ``list_objects_v2``): O(keys) a page, 8-10 s at a million keys,
  where S3 takes about 100 ms whatever the bucket holds. :func:`index_bucket` gives one bucket a
  key store that also keeps its names in a sorted list (every put, ``setlist`` and pop), and makes
  the backend answer that bucket's ListObjectsV2 from the list: bisect to the prefix or past
  ``StartAfter`` / the continuation token, walk forward, roll a common prefix up and skip the rest
  of it with one bisect, stop after ``max_keys``. The entries, ``IsTruncated`` and the continuation
  tokens (moto's own ``_truncate_result``) are moto's; :func:`check` compares the two on a small
  bucket. Other request threads put and delete while a listing runs: the list is read a slice at
  a time, each slice taken under the store's lock together with its bisect (microseconds), so a
  DELETE never waits for a listing, and a key deleted after its slice was taken is left out
  (moto's own listing fails with HTTP 500 then: a KeyError).
* every request, to find its backend, lists moto's package directory and ``stat``s each of its
  ~200 entries (``moto.backends.list_of_moto_modules``) while holding the dispatcher's lock: each
  ``stat`` lets go of the GIL, so with hundreds of requests in flight the lock holder waits for
  the GIL ~200 times a request, and every other request waits for the lock.
  :func:`speed_up_server` lists the directory once (it does not change while the server runs).
* every key of a listing page has its ``LastModified`` string parsed back by dateutil to be
  formatted again (``TimestampSerializer._convert_timestamp_to_str``), ~0.3 ms a key:
  :func:`speed_up_server` remembers the last few thousand strings' answers (keys written in the
  same second share one).
"""

from __future__ import annotations

import functools
import itertools
import threading
from bisect import bisect_left, bisect_right
from typing import Any

from moto.s3.models import FakeBucket, FakeDeleteMarker, FakeKey, S3Backend
from moto.s3.utils import _VersionedKeyStore

SLICE = 256  # names a listing copies from the sorted list at a time


class SortedKeyStore(_VersionedKeyStore):
    """moto's key store (name -> versions), its names also in :attr:`names`, sorted."""

    def __init__(self, source: _VersionedKeyStore) -> None:
        super().__init__()
        for name, versions in dict.items(source):
            dict.__setitem__(self, name, versions)
        self.names = sorted(dict.keys(self))
        self.lock = threading.Lock()  # the dict and the list change together

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            super().__setitem__(key, value)
            self._add(key)

    def setlist(self, key: Any, list_: Any) -> None:
        with self.lock:
            super().setlist(key, list_)
            self._add(key)

    def pop(self, key: str) -> None:  # type: ignore[override]
        with self.lock:
            super().pop(key)
            del self.names[bisect_left(self.names, key)]

    def _add(self, name: str) -> None:
        at = bisect_left(self.names, name)
        if at == len(self.names) or self.names[at] != name:
            self.names.insert(at, name)

    def entries(self, prefix: str, delimiter: str | None, after: str | None, count: int) -> list[FakeKey | str]:
        """The first ``count`` keys and common prefixes under ``prefix`` past ``after``, as moto lists them.

        As moto's: a common prefix (folder) counts where a key of it is a delete marker; a folder
        not past ``after`` is left out, and a key that is a delete marker too.
        """
        found: list[FakeKey | str] = []
        last = after  # every name up to here is done
        skip_to = prefix  # and every name below this (the prefix, then past a folder rolled up)
        while len(found) < count:
            with self.lock:
                start = bisect_left(self.names, skip_to)
                if last is not None:
                    start = max(start, bisect_right(self.names, last))
                chunk = self.names[start : start + SLICE]
            if not chunk:
                return found
            for name in chunk:
                if name < skip_to:
                    continue  # in the folder just rolled up
                if not name.startswith(prefix):
                    return found
                last = name
                cut = name.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    folder = name[: cut + len(delimiter)]  # type: ignore[arg-type]
                    if after is None or folder > after:
                        found.append(folder)
                    skip_to = folder[:-1] + chr(ord(folder[-1]) + 1)  # the first name past the folder
                else:
                    versions = self.getlist(name)  # None: deleted since the slice was taken
                    if versions and not isinstance(versions[-1], FakeDeleteMarker):
                        found.append(versions[-1])
                if len(found) == count:
                    return found
        return found


def list_objects_v2(
    backend: S3Backend,
    bucket: FakeBucket,
    prefix: str | None,
    delimiter: str | None,
    continuation_token: str | None,
    start_after: str | None,
    max_keys: int,
) -> tuple[list[FakeKey | str], bool, str | None]:
    """``S3Backend.list_objects_v2``, from the sorted names where the bucket has them."""
    after = backend._pagination_tokens.get(continuation_token) if continuation_token else start_after
    if (
        not isinstance(bucket.keys, SortedKeyStore)
        or max_keys < 0
        or (continuation_token and after is None)  # moto's own error
        or (delimiter and delimiter.endswith(chr(0x10FFFF)))  # no name past such a folder
    ):
        return S3Backend.list_objects_v2(backend, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
    page = bucket.keys.entries(prefix or "", delimiter or None, after or None, max_keys + 1)
    return backend._truncate_result(page, max_keys)  # type: ignore[no-any-return]


def index_bucket(backend: S3Backend, bucket: FakeBucket) -> None:
    """Keep ``bucket``'s names sorted from now on, and answer its ListObjectsV2 from them."""
    bucket.keys = SortedKeyStore(bucket.keys)
    backend.list_objects_v2 = functools.partial(list_objects_v2, backend)  # type: ignore[method-assign]


def speed_up_server() -> None:
    """List moto's modules once, and remember the timestamps it has formatted (see above)."""
    import moto.backends
    from moto.core.serialize import TimestampSerializer

    moto.backends.list_of_moto_modules = functools.cache(  # type: ignore[assignment]
        lambda modules=moto.backends.list_of_moto_modules: tuple(modules())
    )
    convert = TimestampSerializer._convert_timestamp_to_str
    converted: dict[tuple[type, Any, str], str] = {}

    def convert_timestamp_to_str(self: TimestampSerializer, value: Any, timestamp_format: str) -> str:
        if not isinstance(value, str | int | float):
            return convert(self, value, timestamp_format)
        key = (type(self), value, timestamp_format)
        if key not in converted:
            if len(converted) >= 4096:
                converted.clear()
            converted[key] = convert(self, value, timestamp_format)
        return converted[key]

    TimestampSerializer._convert_timestamp_to_str = convert_timestamp_to_str  # type: ignore[method-assign]


def check() -> None:
    """Raise ``AssertionError`` where the sorted listing answers otherwise than moto on a small bucket."""
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = S3Backend("us-east-1", DEFAULT_ACCOUNT_ID)
    bucket = backend.create_bucket("listing-check", "us-east-1")
    backend.put_bucket_versioning("listing-check", "Enabled")  # delete markers too
    names = [f"{a}/{b}/{c}" for a in ("a", "a0", "ab", "b") for b in ("x", "y.z", "") for c in ("1", "2/3", "4")]
    for name in [*names, "a", "a/", "b/y.z/", "c.d"]:
        backend.put_object("listing-check", name, b"x", disable_notification=True)
    for name in ("a/x/1", "ab/y.z/2/3", "a0//1", "a0//2/3", "a0//4", "c.d"):
        backend.delete_object("listing-check", name)  # a marker: a folder of markers only still lists
    index_bucket(backend, bucket)
    bounds = (None, "", "a", "a/", "a/x/1", "a/x0", "a0//", "ab/y", "zz")
    for prefix, delimiter, start_after, max_keys in itertools.product(
        (None, "a", "a/", "a/x/", "ab/", "b/y.z/", "q"), (None, "/", ".", "x/"), bounds, (0, 1, 3, 1000)
    ):
        token = None
        for _ in range(50):  # every page
            fast = list_objects_v2(backend, bucket, prefix, delimiter, token, start_after, max_keys)
            moto = S3Backend.list_objects_v2(backend, bucket, prefix, delimiter, token, start_after, max_keys)
            assert fast == moto, (prefix, delimiter, start_after, max_keys, token, fast, moto)
            if not fast[1]:
                break
            token = fast[2]
