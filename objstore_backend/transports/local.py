"""Filesystems without object metadata: the local disk (:class:`LocalTransport`), memory
(:class:`MemoryTransport`) and any other fsspec filesystem (:class:`EnvelopeTransport`).

Filesystems without per-object metadata keep it in a header line before the body, in the same
file (:data:`ENVELOPE_MAGIC`), so body and metadata are still written, and read, at once.

Conditional deletes and create-only writes: the local disk makes them with ``flock`` and
atomic renames, memory with one lock for the process its objects live in. Any other
filesystem (sftp, ftp, hdfs, smb, webdav...) offers no conditional operation: its transport
says so (``supports_conditional_delete = supports_create_only = False``) and the GC and
``import`` refuse to run there (see :meth:`objstore_backend.store.ObjectStore.check_guarded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import orjson

from objstore_backend.errors import CorruptObjectError
from objstore_backend.transports.base import (
    CHANGED,
    GONE,
    S3_DELETE_BATCH,
    Body,
    ListedObject,
    RetryPolicy,
    Transport,
    in_slice,
    translate_error,
)

try:  # POSIX: writers and the GC's conditional delete on the local disk agree through flock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ENVELOPE_MAGIC", "META_WRITE", "EnvelopeTransport", "LocalTransport", "MemoryTransport"]

#: The first bytes of every file of this package on a filesystem without object metadata:
#: a JSON header line of metadata follows, then the body.
ENVELOPE_MAGIC = b"\x00objstore-backend\n"
#: Local disk only: a nonce per write, the version the GC compares (see :meth:`LocalTransport._version`).
META_WRITE = "objstorewrite"

_T = TypeVar("_T")


class EnvelopeTransport(Transport):
    """Filesystems without object metadata (sftp, ftp, hdfs, smb, webdav..., and the base of
    the memory and local ones).

    The metadata is a JSON header line before the body in the same file. The filesystem
    is synchronous: its calls run in a worker thread so an async caller's loop stays free.
    Such a filesystem has no conditional delete or create: a delete ignores the version
    listed (none is), a create-only write checks, then writes.
    """

    is_async = False
    supports_conditional_delete = False
    supports_create_only = False
    #: The filesystem's client may hold one connection (ftp), unfit for calls from many threads:
    #: one call at a time per filesystem instance.
    one_call_at_a_time = True
    HEADER_LIMIT = 4096

    @staticmethod
    def pack(body: Body, metadata: dict[str, str]) -> bytes:
        return ENVELOPE_MAGIC + orjson.dumps(metadata) + b"\n" + body

    @staticmethod
    def unpack(data: bytes, path: str) -> tuple[bytes, dict[str, str]]:
        if not data.startswith(ENVELOPE_MAGIC):
            raise CorruptObjectError(f"{path}: not a state object of this package (no header)")
        header, sep, body = data[len(ENVELOPE_MAGIC) :].partition(b"\n")
        try:
            metadata = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise CorruptObjectError(f"{path}: unreadable metadata header") from exc
        if not sep or not isinstance(metadata, dict):
            raise CorruptObjectError(f"{path}: unreadable metadata header")
        return body, metadata

    def _cat(self, fs: Any, path: str, **limits: Any) -> bytes | None:
        """The file's bytes (within ``limits``), or ``None`` if there is no such file.

        Some clients answer a missing file with an error of their own (ftp: ``error_perm: 550``):
        after any other error the filesystem is asked whether the file is there.
        """
        try:
            data: bytes = fs.cat_file(path, **limits)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except Exception:
            if not fs.isfile(path):
                return None
            raise
        return data

    def _read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        data = self._cat(fs, path)
        return None if data is None else self.unpack(data, self.display(path))

    def _head(self, fs: Any, path: str) -> dict[str, str] | None:
        start = self._cat(fs, path, start=0, end=self.HEADER_LIMIT)
        if start is None:
            return None
        if b"\n" not in start[len(ENVELOPE_MAGIC) :]:
            start += b"\n"  # a header longer than the limit is unreadable: unpack says so
        return self.unpack(start, self.display(path))[1]

    def _write(self, fs: Any, path: str, data: bytes, create_only: bool = False) -> None:
        fs.makedirs(fs._parent(path), exist_ok=True)  # ftp, sftp, smb, webdav: no file without its directory
        self._put(fs, path, data, create_only)

    def _put(self, fs: Any, path: str, data: bytes, create_only: bool) -> None:
        """Checked, then written: atomic only where nothing else writes meanwhile (see the class)."""
        if create_only and fs.exists(path):
            raise FileExistsError(f"{self.display(path)} exists")
        fs.pipe_file(path, data)

    def _delete(self, fs: Any, path: str) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _list(self, fs: Any, prefix: str, start_after: str | None, end_at: str | None) -> list[ListedObject]:
        try:
            found = fs.find(prefix, detail=True)
        except FileNotFoundError:
            return []
        return [
            ListedObject(p, int(info.get("size", 0)), None, None)
            for p, info in sorted(found.items())
            if in_slice(p, start_after, end_at)
        ]

    def _list_prefixes(self, fs: Any, prefix: str) -> list[str]:
        try:
            found = fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        return sorted(info["name"].rstrip("/") + "/" for info in found if info.get("type") == "directory")

    async def _in_thread(self, fs: Any, function: Callable[..., _T], *args: Any) -> _T:
        """``function(fs, *args)`` in a worker thread, alone on ``fs`` if :attr:`one_call_at_a_time`."""
        if not self.one_call_at_a_time:
            return await asyncio.to_thread(function, fs, *args)
        with _CALL_LOCKS_LOCK:
            lock = _CALL_LOCKS.setdefault(fs, threading.Lock())

        def alone() -> _T:
            with lock:
                return function(fs, *args)

        return await asyncio.to_thread(alone)

    # Nothing is retried here (remote filesystems' clients retry, or not, on their own), but
    # errors are translated alike.

    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        return await self.attempt("reading", path, lambda: self._in_thread(fs, self._read, path))

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        return await self.attempt("reading the metadata of", path, lambda: self._in_thread(fs, self._head, path))

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        data = self.pack(body, metadata)
        await self.attempt("writing", path, lambda: self._in_thread(fs, self._write, path, data, create_only))

    async def delete(self, fs: Any, path: str) -> None:
        await self.attempt("deleting", path, lambda: self._in_thread(fs, self._delete, path))

    async def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        entries = await self.attempt(
            "listing", prefix, lambda: self._in_thread(fs, self._list, prefix, start_after, end_at)
        )
        for start in range(0, len(entries), S3_DELETE_BATCH):
            yield entries[start : start + S3_DELETE_BATCH]

    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        found = await self.attempt("listing", prefix, lambda: self._in_thread(fs, self._list_prefixes, prefix))
        return [path for path in found if in_slice(path, start_after, None)], 1

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        self._delete(fs, path)
        return None

    def _delete_items(self, fs: Any, items: Sequence[tuple[str, str | None]]) -> list[tuple[str, str]]:
        failures = []
        for path, version in items:
            try:
                reason = self._delete_if_unchanged(fs, path, version)
            except OSError as exc:
                reason = str(translate_error(exc, "deleting", self.display(path), 1))
            if reason is not None:
                failures.append((path, reason))
        return failures

    async def delete_batch(
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        return await self._in_thread(fs, self._delete_items, items)


#: Filesystem instance -> the lock its calls take (see :attr:`EnvelopeTransport.one_call_at_a_time`).
_CALL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_CALL_LOCKS_LOCK = threading.Lock()

#: Every write and conditional delete on the memory filesystem, whose objects live in this process.
_MEMORY_LOCK = threading.Lock()


class MemoryTransport(EnvelopeTransport):
    """The memory filesystem: its objects live in this process, so one lock makes writes,
    create-only writes and the GC's conditional deletes atomic with one another.

    An object's version is a digest of its bytes: a key rewritten since it was listed (with
    another value, expiry or update time) is no longer that version, and is kept.
    """

    supports_conditional_delete = True
    supports_create_only = True
    one_call_at_a_time = False

    @staticmethod
    def _digest(data: bytes) -> str:
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    def _write(self, fs: Any, path: str, data: bytes, create_only: bool = False) -> None:
        with _MEMORY_LOCK:
            self._put(fs, path, data, create_only)

    def _list(self, fs: Any, prefix: str, start_after: str | None, end_at: str | None) -> list[ListedObject]:
        entries = []
        for entry in super()._list(fs, prefix, start_after, end_at):
            with contextlib.suppress(FileNotFoundError):  # deleted since listed
                entries.append(ListedObject(entry.path, entry.size, self._digest(fs.cat_file(entry.path)), None))
        return entries

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        with _MEMORY_LOCK:
            try:
                if version is not None and self._digest(fs.cat_file(path)) != version:
                    return CHANGED
                fs.rm_file(path)
            except FileNotFoundError:
                return GONE if version is not None else None
            return None


class LocalTransport(EnvelopeTransport):
    """The local disk: atomic writes (temp file + rename) and a streamed listing.

    A writer that dies mid-``set`` leaves at most a ``~tmp-`` file beside the key, which every
    read and listing ignores; the key itself is the old value or the new one, whole. Writers
    hold a shared ``flock`` on the key's directory while they rename, the GC's conditional
    delete an exclusive one while it compares and unlinks: a key rewritten since the GC checked
    it is never deleted, and readers never see a live key vanish for a moment.
    """

    supports_conditional_delete = True
    supports_create_only = True
    one_call_at_a_time = False
    #: Temporary files start with "~", which no escaped segment does.
    TEMP_MARKER = "~tmp-"
    GRAVE_MARKER = "~gc-"
    #: How often a writer makes its directory again when a delete removed it, empty, meanwhile.
    MKDIR_ATTEMPTS = 20

    def __init__(self, retry: RetryPolicy | None = None, display: Callable[[str], str] | None = None) -> None:
        super().__init__(retry, display)
        #: The store's base directory: deletes remove the directories they empty, up to here.
        self.root = ""

    def _create_temp(self, directory: str) -> tuple[str, Any]:
        """A new temp file in ``directory`` (made if missing), open for writing.

        A delete removes a directory it leaves empty (:meth:`_prune`), which can happen between
        this writer's ``makedirs`` and its ``open``: the writer then makes the directory again.
        Once the temp file exists the directory is not empty, and no ``rmdir`` can remove it.
        """
        temp = os.path.join(directory, f"{self.TEMP_MARKER}{uuid.uuid4().hex}")
        for attempt in range(1, self.MKDIR_ATTEMPTS + 1):
            try:
                os.makedirs(directory, exist_ok=True)
                return temp, open(temp, "wb")  # noqa: SIM115 - closed by the caller
            except (FileNotFoundError, FileExistsError):  # makedirs: made by another, then removed
                if attempt == self.MKDIR_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, fs: Any, path: str, data: bytes, create_only: bool = False) -> None:
        directory = os.path.dirname(path)
        temp, handle = self._create_temp(directory)
        try:
            with handle:
                handle.write(data)
            with _directory_lock(directory, exclusive=False):
                if create_only:
                    os.link(temp, path)  # atomic: FileExistsError if the key exists
                    os.unlink(temp)
                else:
                    os.replace(temp, path)
        except BaseException:
            with _suppress_os_error():
                os.unlink(temp)
            raise

    def _prune(self, directory: str) -> None:
        """Remove ``directory`` and its parents below the base while they are empty.

        ``rmdir`` refuses a directory that is not empty, atomically: a key (or a writer's temp
        file) created meanwhile keeps its directory. See :meth:`_create_temp` for the writer's side.
        """
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty, or already gone
                return
            directory = os.path.dirname(directory)

    def _delete_items(self, fs: Any, items: Sequence[tuple[str, str | None]]) -> list[tuple[str, str]]:
        failures = super()._delete_items(fs, items)
        for directory in sorted({os.path.dirname(path) for path, _ in items}, key=len, reverse=True):
            self._prune(directory)
        return failures

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        # A nonce per write, in the header: the version the GC's conditional delete compares.
        await super().write(fs, path, body, {**metadata, META_WRITE: secrets.token_hex(8)}, create_only=create_only)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _delete(self, fs: Any, path: str) -> None:
        self._unlink(path)
        self._prune(os.path.dirname(path))

    def _list(self, fs: Any, prefix: str, start_after: str | None, end_at: str | None) -> list[ListedObject]:
        entries = []
        for directory, dirs, files in os.walk(prefix.rstrip("/") or "/"):
            # only the directories whose subtree can hold keys of the slice are walked
            dirs[:] = sorted(d for d in dirs if _may_hold_slice(os.path.join(directory, d) + "/", start_after, end_at))
            for name in sorted(files):
                full = os.path.join(directory, name)
                if name.startswith("~") or not in_slice(full, start_after, end_at):
                    continue
                with _suppress_os_error():
                    stat = os.stat(full)
                    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
                    entries.append(ListedObject(full, stat.st_size, self._version(full, stat), None, modified))
        entries.sort(key=lambda entry: entry.path)  # key order, as object stores list
        return entries

    def _list_prefixes(self, fs: Any, prefix: str) -> list[str]:
        try:
            with os.scandir(prefix) as found:
                return sorted(os.path.join(prefix, e.name) + "/" for e in found if e.is_dir() and e.name[0] != "~")
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def remove_abandoned(self, fs: Any, prefix: str, before: datetime, *, dry_run: bool) -> int:
        return await asyncio.to_thread(self._remove_abandoned, prefix, before.timestamp(), dry_run)

    def _remove_abandoned(self, prefix: str, cutoff: float, dry_run: bool) -> int:
        """The temp files of killed writers, last written before ``cutoff``, and the directories
        left empty (by them, or by versions that did not remove emptied directories). A grave
        (``~gc-``) may hold a value a killed GC moved aside and had still to put back: those are
        left alone."""
        removed = 0
        for directory, _, files in os.walk(prefix.rstrip("/") or "/", topdown=False):
            for name in files:
                full = os.path.join(directory, name)
                with _suppress_os_error():
                    if name.startswith(self.TEMP_MARKER) and os.stat(full).st_mtime < cutoff:
                        if not dry_run:
                            os.unlink(full)
                        removed += 1
            if not dry_run and directory.startswith(self.root + os.sep):
                with _suppress_os_error():
                    os.rmdir(directory)  # only if empty
        return removed

    def _version(self, path: str, stat: os.stat_result) -> str:
        """What tells one write of a file from another: its write nonce, inode, mtime and size.

        Inode, mtime and size alone are not enough: a freed inode is soon reused, and many
        filesystems stamp times from a coarse clock (a few ms, or whole seconds), so two quick
        writes of the same size can share all three. The nonce in the header (files written by
        this package since it has one) cannot. Read as :meth:`_head` does, a few bytes at most.
        """
        nonce = ""
        with _suppress_os_error():
            with open(path, "rb") as handle:
                start = handle.read(self.HEADER_LIMIT)
            header = start[len(ENVELOPE_MAGIC) : start.find(b"\n", len(ENVELOPE_MAGIC))]
            if start.startswith(ENVELOPE_MAGIC) and header:
                with contextlib.suppress(ValueError):
                    document = orjson.loads(header)
                    nonce = str(document.get(META_WRITE, "")) if isinstance(document, dict) else ""
        return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}:{nonce}"

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        """Delete the file only if it is still the version checked (its directory: see :meth:`_delete_items`)."""
        if version is None:
            self._unlink(path)
            return None
        try:
            with _directory_lock(os.path.dirname(path), exclusive=True) as locked:
                if locked:  # no writer can rename over the key until we are done
                    if self._version(path, os.stat(path)) != version:
                        return CHANGED
                    os.unlink(path)
                    return None
                return self._delete_by_rename(path, version)
        except FileNotFoundError:
            return GONE

    def _delete_by_rename(self, path: str, version: str) -> str | None:
        """Without flock (some network filesystems): move aside, compare, put back if rewritten."""
        grave = os.path.join(os.path.dirname(path), f"{self.GRAVE_MARKER}{uuid.uuid4().hex}")
        os.rename(path, grave)
        if self._version(grave, os.stat(grave)) == version:
            os.unlink(grave)
            return None
        with _suppress_os_error():  # rewritten since checked: put it back unless a newer one landed
            os.link(grave, path)
        os.unlink(grave)
        return CHANGED


@contextlib.contextmanager
def _directory_lock(directory: str, *, exclusive: bool) -> Iterator[bool]:
    """``flock`` a directory (shared or exclusive); yields False where flock is unavailable."""
    if fcntl is None:
        yield False
        return
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # e.g. ENOLCK / EBADF on a network filesystem
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def _may_hold_slice(directory: str, start_after: str | None, end_at: str | None) -> bool:
    """Whether some path under ``directory`` (ending in ``/``) can fall in the slice."""
    if end_at is not None and directory > end_at:
        return False  # every path under it is past the end
    # the largest path under it starts with the directory, then anything: below the start only
    # if the start is past every such path (it starts with the directory and nothing sorts after)
    return start_after is None or start_after < directory or start_after.startswith(directory)


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)
