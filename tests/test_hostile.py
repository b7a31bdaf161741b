"""Hostile input, table-driven: each case gets a clear error or a correct result, and touches
nothing outside its scope. Then credentials: they never reach logs, refs, errors or command output.

Rows here extend ``tests/test_backend.py`` (its ``HOSTILE`` ids, bad offload values, bad
primary values and foreign refs are not repeated). Every case runs on the local disk, on S3
(moto) and on Azure (Azurite), unless it is about one store. Before each case, sentinel keys are written in other
scopes; after it, they must be exactly as they were, and any object the case added must lie
under a prefix of a scope the case named.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend import cli
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import (
    BucketNotFoundError,
    CorruptObjectError,
    StoreAccessDenied,
    StoreError,
)
from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.layout import object_path, scope_prefix
from objstore_backend.store import ObjectMetadata, ObjectStore
from objstore_backend.transports.base import META_EXPIRES, META_LAYOUT, META_MODE
from objstore_backend.transports.local import ENVELOPE_MAGIC
from objstore_backend.transports.s3 import META_PAD, _client_error_code
from tests.servers import CountingProxy, ProxiedRequest, azurite_connection_string, create_azure_container

T = TaskScope
A = AssetScope
SCOPE = T("d", "r", "t")
SENTINELS = [(T("sentinel", "run", "task"), "keep"), (A(name="sentinel"), "keep"), (T("d", "r", "t2"), "keep")]


@pytest.fixture(scope="module")
def shared_backends(
    moto_server: Any, s3_client: Any, azure_proxy: CountingProxy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ObjectStoreBackend]:
    """One backend per store kind for the whole table (a new S3 client costs 0.1-0.4 s).

    The cases run on the local disk, S3 and Azure; test_backend.py covers memory and GCS.
    """
    bucket = f"hostile-{os.getpid()}"
    s3_client.create_bucket(Bucket=bucket)
    create_azure_container(azure_proxy.url, bucket)
    azure_options = {"connection_string": azurite_connection_string(azure_proxy.url)}
    options = {
        "endpoint_url": moto_server.endpoint_url,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    return {
        "local": ObjectStoreBackend(StoreSettings(path=str(tmp_path_factory.mktemp("hostile") / "state"))),
        "s3": ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/state", storage_options=options)),
        "azure": ObjectStoreBackend(StoreSettings(path=f"abfs://{bucket}/state", storage_options=azure_options)),
    }


def _container(backend: ObjectStoreBackend) -> Any:
    """The SDK's synchronous client of an Azure backend's container, to read and write around the store."""
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(
        backend.store.storage_options["connection_string"], backend.store.root.partition("/")[0]
    )


def emptied(kind: str, backend: ObjectStoreBackend, s3_client: Any) -> Ctx:
    """The shared backend of this kind, emptied: every case starts from a bare store."""
    root = backend.store.root
    if kind == "local":
        shutil.rmtree(root)
        os.makedirs(root, mode=0o700)
    elif kind == "azure":
        container = _container(backend)
        for blob in container.list_blobs(name_starts_with=root.partition("/")[2] + "/"):
            container.delete_blob(blob.name)
    else:
        bucket, _, prefix = root.partition("/")
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                s3_client.delete_object(Bucket=bucket, Key=item["Key"])
    return Ctx(backend, kind, s3_client)


@dataclass
class Ctx:
    backend: ObjectStoreBackend
    kind: str
    s3_client: Any = None

    @property
    def store(self) -> ObjectStore:
        return self.backend.store

    def place(self, scope: Any, key: str, body: bytes, metadata: dict[str, str] | None) -> None:
        """Put an object where (scope, key) lives, by hand: raw body, metadata as given (or none)."""
        full = self.store.full_path(object_path(scope, key))
        if self.kind == "s3":
            bucket, _, name = full.partition("/")
            self.s3_client.put_object(Bucket=bucket, Key=name, Body=body, Metadata=metadata or {})
            return
        if self.kind == "azure":
            _container(self.backend).upload_blob(full.partition("/")[2], body, overwrite=True, metadata=metadata)
            return
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = body if metadata is None else ENVELOPE_MAGIC + orjson.dumps(metadata) + b"\n" + body
        with open(full, "wb") as handle:
            handle.write(data)

    def snapshot(self) -> dict[str, bytes]:
        """Every object under the base, as raw bytes (read around the store: some are damaged)."""
        snap = {}
        for listed in self.store.iter_objects():
            full = self.store.full_path(listed.path)
            if self.kind == "s3":
                bucket, _, name = full.partition("/")
                snap[listed.path] = self.s3_client.get_object(Bucket=bucket, Key=name)["Body"].read()
            elif self.kind == "azure":
                snap[listed.path] = _container(self.backend).download_blob(full.partition("/")[2]).readall()
            else:
                with open(full, "rb") as handle:
                    snap[listed.path] = handle.read()
        return snap


# -- round trips: hostile ids and keys stay in their scope, distinct, and come back unchanged --------

Write = tuple[Any, str, str]


@dataclass
class RoundTrip:
    writes: list[Write]
    extra: Callable[[Ctx], None] | None = None


ROUND_TRIPS: dict[str, RoundTrip] = {
    "traversal in dag_id": RoundTrip([(T("../../../etc", "r", "t"), "k", '"a"'), (T("etc", "r", "t"), "k", '"b"')]),
    "encoded traversal in run_id": RoundTrip(
        [(T("d", "..%2F..%2Fx", "t"), "k", "1"), (T("d", "../../x", "t"), "k", "2"), (T("d", "x", "t"), "k", "3")]
    ),
    "backslash traversal in task_id": RoundTrip(
        [(T("d", "r", "..\\..\\t"), "k", "1"), (T("d", "r", "t"), "k", "2"), (T("d", "r", "\\"), "k", "3")]
    ),
    "absolute path as key": RoundTrip(
        [(SCOPE, "/etc/passwd", "1"), (SCOPE, "etc/passwd", "2"), (SCOPE, "passwd", "3")]
    ),
    "asset name aiming at the task namespace": RoundTrip(
        [
            (A(name="../../task/d/r/t/-1"), "k", "1"),
            (SCOPE, "k", "2"),
            (A(name="../id/1"), "k", "3"),
            (A(asset_id=1), "k", "4"),
        ]
    ),
    "asset uri with traversal": RoundTrip([(A(uri="s3://b/../../asset/id/1"), "k", "1"), (A(asset_id=1), "k", "2")]),
    "map index extremes": RoundTrip(
        [(T("d", "r", "t", i), "k", str(n)) for n, i in enumerate((-2, -1, 0, 1, 10, 10**20))]
    ),
    "NFC and NFD twins as keys": RoundTrip([(SCOPE, "caf\u00e9", "1"), (SCOPE, "cafe\u0301", "2")]),
    "NFC and NFD twins as ids": RoundTrip(
        [(T("d\u00e9", "r", "t"), "k", "1"), (T("de\u0301", "r", "t"), "k", "2"), (A(name="\u00c5"), "k", "3")]
        + [(A(name="A\u030a"), "k", "4"), (A(name="\u212b"), "k", "5")]  # Å: precomposed, decomposed, Angstrom sign
    ),
    "slash look-alikes": RoundTrip(
        [(T("a\uff0fb", "r", "t"), "k", "1"), (T("a\u2215b", "r", "t"), "k", "2"), (T("a/b", "r", "t"), "k", "3")]
    ),
    "invisible and bidi characters": RoundTrip(
        [
            (SCOPE, "k\u200b", "1"),
            (SCOPE, "k", "2"),
            (SCOPE, "\u202ekey", "3"),
            (SCOPE, "key", "4"),
            (SCOPE, "\ufeffk", "5"),
        ]
    ),
    "very long ids and key": RoundTrip([(T("d" * 10_000, "r" * 10_000, "t" * 10_000, 3), "k" * 10_000, '"long"')]),
    "long ids differing only at the end": RoundTrip(
        [(T("x" * 5_000 + "a", "r", "t"), "k", "1"), (T("x" * 5_000 + "b", "r", "t"), "k", "2")]
        + [(SCOPE, "y" * 5_000 + "a", "3"), (SCOPE, "y" * 5_000 + "b", "4")]
    ),
    "long multibyte key": RoundTrip([(SCOPE, "\u00e9" * 600, "1"), (SCOPE, "\u00e9" * 599 + "e", "2")]),
    "control characters": RoundTrip(
        [(T("d", "r\r\n", "t"), "\x7f", "1"), (SCOPE, "\x1b[31mred", "2"), (SCOPE, "\x00", "3")]
    ),
    "URL syntax in keys": RoundTrip([(SCOPE, "?x=1#frag", "1"), (SCOPE, "%00", "2"), (SCOPE, "a+b c", "3")]),
    "key named like the local temp files": RoundTrip([(SCOPE, "~tmp-0123", "1"), (SCOPE, "~gc-0123", "2")]),
    "dot runs": RoundTrip([(SCOPE, "...", "1"), (SCOPE, ". .", "2"), (T("..", "...", "...."), "k", "3")]),
    "key that looks like a ref": RoundTrip(
        [(SCOPE, "objstore:task/d/r/t/-1/k", '"ref-looking"'), (SCOPE, "k", '"plain"')],
        extra=lambda ctx: _ref_looking_key(ctx),
    ),
    "primary value null": RoundTrip([(SCOPE, "k", "null")]),
    "primary value huge int literal": RoundTrip([(SCOPE, "k", "123456789012345678901234567890")]),
    # valid JSON text, kept verbatim (Python's json reads it as infinity; nothing is lost here)
    "primary value beyond a double's range": RoundTrip([(SCOPE, "k", "[1e400, -1E+999]")]),
    "primary value with trailing whitespace": RoundTrip([(SCOPE, "k", '{"a": 1} \n\t'), (SCOPE, "j", "  [1]")]),
    "primary value with escapes and raw unicode": RoundTrip([(SCOPE, "k", '["\\u00e9", "\u00e9", "\\ud83d\\ude00"]')]),
    "offload value of 4 MB": RoundTrip([], extra=lambda ctx: _big_offload(ctx)),
}


def _ref_looking_key(ctx: Ctx) -> None:
    ref = ctx.backend.serialize_task_state_store_to_ref(value={"v": 1}, key="objstore:task/d/r/t/-1/k", scope=SCOPE)
    assert ctx.backend.deserialize_task_state_store_from_ref(ref) == {"v": 1}
    assert ctx.backend.get(SCOPE, "k") == '"plain"'  # the key it looks like is another object


def _big_offload(ctx: Ctx) -> None:
    value = {"blob": "\u00e9" * 2_000_000, "n": list(range(1000))}
    ref = ctx.backend.serialize_task_state_store_to_ref(value=value, key="big", scope=SCOPE)
    assert ctx.backend.deserialize_task_state_store_from_ref(ref) == value


# -- refused before any I/O -------------------------------------------------------------------------


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


REFUSED: dict[str, tuple[Callable[[ObjectStoreBackend], Any], type[BaseException], str]] = {
    "lone surrogate in a key": (lambda b: b.set(SCOPE, "\ud800", "1"), ValueError, "surrogate"),
    "lone surrogate in an id": (lambda b: b.get(T("\udfff", "r", "t"), "k"), ValueError, "surrogate"),
    "map index smuggling a path": (lambda b: b.set(T("d", "r", "t", "0/../1"), "k", "1"), TypeError, "map_index"),
    "map index True": (lambda b: b.clear(T("d", "r", "t", True)), TypeError, "map_index"),
    "asset id smuggling a path": (lambda b: b.set(A(asset_id="1/../2"), "k", "1"), TypeError, "asset_id"),
    "asset scope naming nothing": (  # Airflow's AssetScope refuses it too; a duck-typed one gets here
        lambda b: b.clear(SimpleNamespace(asset_id=None, name=None, uri=None)),
        ValueError,
        "asset_id, a name or a uri",
    ),
    "key None": (lambda b: b.set(SCOPE, None, "1"), TypeError, "must be str"),
    "key an int": (lambda b: b.delete(SCOPE, 5), TypeError, "must be str"),
    "primary -Infinity": (lambda b: b.set(SCOPE, "k", "-Infinity"), ValueError, "not a valid JSON document"),
    "primary escaped lone surrogate": (lambda b: b.set(SCOPE, "k", '"\\ud800"'), ValueError, "not a valid JSON"),
    "primary raw lone surrogate": (lambda b: b.set(SCOPE, "k", '"\ud800"'), ValueError, "not a valid JSON"),
    "offload nesting beyond 255": (
        lambda b: b.serialize_task_state_store_to_ref(value=_deep(300), key="k", scope=SCOPE),
        TypeError,
        "not JSON-serialisable",
    ),
    "offload NaN inside a tuple": (
        lambda b: b.serialize_task_state_store_to_ref(value={"a": (1, float("nan"))}, key="k", scope=SCOPE),
        ValueError,
        "non-finite",
    ),
    "offload -0.0 and Infinity mixed": (
        lambda b: b.serialize_asset_state_store_to_ref(value=[-0.0, -float("inf")], key="k", scope=A(name="a")),
        ValueError,
        "non-finite",
    ),
}


# -- objects placed in the store by hand ---------------------------------------------------------------

GOOD_META = {META_LAYOUT: "1", META_MODE: "primary"}

Placed = tuple[bytes, dict[str, str] | None, Callable[[ObjectStoreBackend], Any], type[BaseException], str]
PLACED: dict[str, Placed] = {
    "binary garbage body": (
        b"\xff\xfe\x00garbage",
        GOOD_META,
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "not a JSON",
    ),
    "truncated JSON body": (b'{"a": [1, 2', GOOD_META, lambda b: b.get(SCOPE, "k"), CorruptObjectError, "not a JSON"),
    "offload object with a damaged body": (
        b"[1, 2,",
        {META_LAYOUT: "1", META_MODE: "offload"},
        lambda b: b.deserialize_task_state_store_from_ref("objstore:" + object_path(SCOPE, "k")),
        CorruptObjectError,
        "not a JSON document",
    ),
    "unknown layout version": (
        b"1",
        {**GOOD_META, META_LAYOUT: "2"},
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "not a state object",
    ),
    "unknown mode": (
        b"1",
        {**GOOD_META, META_MODE: "weird"},
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "not a state object",
    ),
    "garbage expiry": (
        b"1",
        {**GOOD_META, META_EXPIRES: "tomorrow"},
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "unreadable expiry",
    ),
    "expiry without a zone": (
        b"1",
        {**GOOD_META, META_EXPIRES: "2030-01-01T00:00:00"},
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "unreadable expiry",
    ),
    "damaged gzip body": (
        b"\x1f\x8b\x08\x00garbage",
        GOOD_META,
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "damaged",
    ),
    "no metadata at all, read by the offload hook": (
        b'{"a": 1}',
        None,
        lambda b: b.deserialize_task_state_store_from_ref("objstore:" + object_path(SCOPE, "k")),
        CorruptObjectError,
        "not a state object",
    ),
}
LOCAL_PLACED: dict[str, Placed] = {
    "empty file": (b"", None, lambda b: b.get(SCOPE, "k"), CorruptObjectError, "no header"),
    "header that is not JSON": (
        ENVELOPE_MAGIC + b"{nope\n1",
        None,
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "unreadable metadata",
    ),
}
S3_PLACED: dict[str, Placed] = {
    "padding metadata longer than the body": (
        b"1",
        {**GOOD_META, META_PAD: "99"},
        lambda b: b.get(SCOPE, "k"),
        CorruptObjectError,
        "objstorepad",
    ),
}


@dataclass
class Case:
    kind: str  # "round trip" | "refused" | "placed"
    name: str
    stores: tuple[str, ...] = ("local", "s3", "azure")
    data: Any = field(default=None)


CASES = (
    [Case("round trip", name, data=case) for name, case in ROUND_TRIPS.items()]
    + [Case("refused", name, data=case) for name, case in REFUSED.items()]
    + [Case("placed", name, data=case) for name, case in PLACED.items()]
    + [Case("placed", name, ("local",), case) for name, case in LOCAL_PLACED.items()]
    + [Case("placed", name, ("s3",), case) for name, case in S3_PLACED.items()]
)


@pytest.mark.parametrize(
    "kind, case",
    [(kind, case) for kind in ("local", "s3", "azure") for case in CASES if kind in case.stores],
    ids=lambda value: value if isinstance(value, str) else f"{value.kind}: {value.name}",
)
def test_hostile_input(kind: str, case: Case, shared_backends: dict[str, ObjectStoreBackend], s3_client: Any) -> None:
    ctx = emptied(kind, shared_backends[kind], s3_client)
    backend = ctx.backend
    for scope, key in SENTINELS:
        backend.set(scope, key, '"sentinel"')
    before = ctx.snapshot()
    allowed: list[str] = []

    if case.kind == "round trip":
        writes: list[Write] = case.data.writes
        for scope, key, value in writes:
            backend.set(scope, key, value)
        for scope, key, value in writes:
            assert backend.get(scope, key) == value, (scope, key)
        paths = [object_path(scope, key) for scope, key, _ in writes]
        assert len(set(paths)) == len(paths), "two ids or keys collided"
        for path in paths:
            assert path.isascii() and len(path.encode()) <= 1024 - 150, path
            assert not {"..", ".", ""} & set(path.split("/")), path
        allowed = [scope_prefix(scope) for scope, _, _ in writes] + [scope_prefix(SCOPE)]
        if case.data.extra:
            case.data.extra(ctx)
        if writes:  # clearing the first scope leaves every other one alone
            first = writes[0][0]
            backend.clear(first)
            for scope, key, value in writes:
                expected = None if scope_prefix(scope) == scope_prefix(first) else value
                assert backend.get(scope, key) == expected, (scope, key)
    elif case.kind == "refused":
        call, error, match = case.data
        with pytest.raises(error, match=match):
            call(backend)
    else:
        body, metadata, call, error, match = case.data
        ctx.place(SCOPE, "k", body, metadata)
        with pytest.raises(error, match=match) as failure:
            call(backend)
        assert backend.store.display_path(object_path(SCOPE, "k")) in str(failure.value)
        report = run_gc(backend.store)  # the GC deletes no object it cannot read
        assert report.deleted == 0 and report.errors == 0
        allowed = [object_path(SCOPE, "k")]

    after = ctx.snapshot()
    for scope, key in SENTINELS:
        path = object_path(scope, key)
        assert after[path] == before[path], f"{path} was touched"
    for path in set(before) ^ set(after) | {p for p in before if p in after and before[p] != after[p]}:
        assert any(path.startswith(prefix) for prefix in allowed), f"{path} is outside the case's scopes"


# -- the store itself: a missing bucket, wrong credentials ------------------------------------------

OPERATIONS: dict[str, Callable[[ObjectStoreBackend], Any]] = {
    "set": lambda b: b.set(SCOPE, "k", "1"),
    "get": lambda b: b.get(SCOPE, "k"),
    "delete": lambda b: b.delete(SCOPE, "k"),
    "clear": lambda b: b.clear(SCOPE),
    "offload": lambda b: b.serialize_task_state_store_to_ref(value=1, key="k", scope=SCOPE),
}


@pytest.mark.parametrize("where", ["s3", "gcs", "azure"])
def test_a_base_path_in_a_missing_bucket_names_the_bucket(where: str, request: pytest.FixtureRequest) -> None:
    options = request.getfixturevalue(f"{where}_options")
    url = f"{ {'s3': 's3', 'gcs': 'gs', 'azure': 'abfs'}[where] }://no-such-bucket-0042/state"
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    for name, operation in OPERATIONS.items():
        if where == "gcs" and name in ("get", "delete"):
            # GCS answers 404 alike for a missing object and a missing bucket: a get is None, a delete a no-op
            assert operation(backend) is None
            continue
        with pytest.raises(BucketNotFoundError, match="no-such-bucket-0042"):
            operation(backend)
    report = run_gc(backend.store)
    assert report.errors == 1 and "no-such-bucket-0042" in report.error_samples[0]


def test_an_unexpected_404_keeps_the_s3_error_as_its_cause(
    s3_bucket: str, s3_fault_options: dict, s3_fault_proxy: CountingProxy
) -> None:
    """A 404 that is neither a missing key nor a missing bucket passes as it came, S3's code kept."""
    body = b"<Error><Code>NoSuchUpload</Code><Message>The upload does not exist.</Message></Error>"
    s3_fault_proxy.answer = lambda request: (404, {"Content-Type": "application/xml"}, body)
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_fault_options))
    with pytest.raises(FileNotFoundError) as failure:
        backend.set(SCOPE, "k", "1")
    assert failure.value.__cause__ is not failure.value
    assert _client_error_code(failure.value) == "NoSuchUpload"


SECRET_KEY_ID = "AKIA-SECRET-DO-NOT-LOG-123"
SECRET = "SECRET-DO-NOT-LOG-456/abcdef"


def _deny_s3_key(request: ProxiedRequest) -> tuple[int, dict[str, str], bytes] | None:
    """Answer as S3 does to an unknown access key id (it echoes the id in the error body)."""
    if f"Credential={SECRET_KEY_ID}/" not in request.headers.get("authorization", ""):
        return None
    body = (
        "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in "
        f"our records.</Message><AWSAccessKeyId>{SECRET_KEY_ID}</AWSAccessKeyId><RequestId>R</RequestId></Error>"
    )
    return 403, {"Content-Type": "application/xml"}, body.encode()


def _deny_gcs(request: ProxiedRequest) -> tuple[int, dict[str, str], bytes] | None:
    error = {"code": 403, "message": "caller does not have storage.objects.get access to the object."}
    return 403, {"Content-Type": "application/json"}, json.dumps({"error": error}).encode()


def _chain(exc: BaseException | None) -> str:
    text = []
    while exc is not None:
        text += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(text)


@pytest.mark.parametrize("where", ["s3", "gcs"])
def test_wrong_credentials_say_access_denied_and_name_the_object(
    where: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = request.getfixturevalue(f"{where}_bucket")
    if where == "s3":
        proxy: CountingProxy = request.getfixturevalue("s3_fault_proxy")
        proxy.answer = _deny_s3_key
        options = {**request.getfixturevalue("s3_fault_options"), "key": SECRET_KEY_ID, "secret": SECRET}
        url = f"s3://{bucket}/state"
    else:
        proxy = request.getfixturevalue("gcs_proxy")
        proxy.reset()
        proxy.answer = _deny_gcs
        options = {**request.getfixturevalue("gcs_options")}
        url = f"gs://{bucket}/state"
    caplog.set_level(logging.DEBUG)
    try:
        backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
        for name, operation in OPERATIONS.items():
            with pytest.raises(StoreAccessDenied, match="access denied") as failure:
                operation(backend)
            message = str(failure.value)
            assert isinstance(failure.value, PermissionError) and isinstance(failure.value, StoreError)
            where_ = backend.store.display_path(scope_prefix(SCOPE) if name == "clear" else object_path(SCOPE, "k"))
            assert where_ in message, message
            assert SECRET not in _chain(failure.value) and SECRET_KEY_ID not in _chain(failure.value)
        assert proxy.log.count() == len(OPERATIONS)  # refusals are never retried
        report = run_gc(backend.store)
        assert report.errors == 1 and "access denied" in report.error_samples[0]
        assert SECRET not in caplog.text and SECRET not in str(report.as_dict())
    finally:
        proxy.reset()


# -- credentials never leak ------------------------------------------------------------------------------


def test_credentials_never_reach_logs_refs_errors_or_command_output(
    s3_bucket: str, s3_options: dict, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret-looking key id and secret go through every path that prints or returns text."""
    options = {**s3_options, "key": SECRET_KEY_ID, "secret": SECRET}  # moto takes any credentials
    caplog.set_level(logging.DEBUG)  # every logger: ours, s3fs, botocore, aiobotocore, urllib3
    url = f"s3://{s3_bucket}/state"
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    texts = [repr(backend), repr(backend.store), backend.store.url, backend.store.display_path("x")]
    backend.set(SCOPE, "k", '"v"', expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    backend.set(SCOPE, "keep", '"v"')
    texts.append(backend.serialize_task_state_store_to_ref(value={"v": 1}, key="o", scope=SCOPE))
    texts.append(backend.serialize_asset_state_store_to_ref(value=[1], key="o", scope=A(name="a")))
    texts.append(str(backend.get(SCOPE, "keep")))
    texts.append(str(run_gc(backend.store).as_dict()))
    backend.store.write(object_path(SCOPE, "c"), b"{", ObjectMetadata("primary"))  # a damaged object
    for bad in (lambda: backend.set(SCOPE, "k", "NaN"), lambda: backend.get(SCOPE, "c")):
        with pytest.raises((ValueError, StoreError)) as failure:
            bad()
        texts.append(_chain(failure.value))
    for url_with_credentials in (
        f"s3://{SECRET_KEY_ID}:{SECRET}@{s3_bucket}/state",
        f"gs://{SECRET_KEY_ID}:{SECRET}@bucket/p",
    ):
        with pytest.raises(ValueError, match="never in the URL") as failure:  # refused, and not echoed
            ObjectStore(url_with_credentials, options if url_with_credentials.startswith("s3") else {"token": "anon"})
        texts.append(_chain(failure.value))
    missing = ObjectStoreBackend(StoreSettings(path="s3://no-such-bucket-0042/state", storage_options=options))
    with pytest.raises(BucketNotFoundError) as failure:
        missing.get(SCOPE, "k")
    texts.append(_chain(failure.value))
    argv_options = ["--path", url, "--storage-options", json.dumps(options)]
    for argv in (
        ["-vv", "gc", *argv_options, "--json"],
        ["-vv", "gc", *argv_options],
        ["-vv", "audit", *argv_options, "--json"],
        ["-vv", "ls", *argv_options],
        ["-vv", "get", *argv_options, object_path(SCOPE, "keep"), "-m"],
        ["gc", "--path", "s3://no-such-bucket-0042/state", "--storage-options", json.dumps(options), "--json"],
    ):
        cli.main(argv)
        captured = capsys.readouterr()
        texts += [captured.out, captured.err]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("objstore_backend")]
    everything = "\n".join(texts + ours)
    assert SECRET not in everything and SECRET_KEY_ID not in everything
    # No logger at all prints the secret. (botocore's own DEBUG log of each request prints its
    # headers: the Authorization header names the access key id, never the secret.)
    assert SECRET not in caplog.text
    assert any("gc:" in message for message in ours)  # our loggers were captured


def _exit_status(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exited:  # argparse refuses bad usage by exiting
        return int(exited.code or 0)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE7Q:wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY@bucket/state/",  # the shape
        f"s3://{SECRET_KEY_ID}:{SECRET}@bucket/state/",  # a secret with a "/" in it
        "gs://AKIAEXAMPLE7Q:wJal@rXUtnFEMIK7MDENG@bucket/p",  # an "@" in the password
        "s3://AKIAEXAMPLE7Q%3AwJalrXUtnFEMIK7MDENG@bucket/p",  # escaped ":"
    ],
    ids=["key:secret", "secret-with-slash", "secret-with-at", "escaped-colon"],
)
def test_credentials_in_the_base_url_are_refused_and_never_repeated(
    url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user part is no connection id: refused at start-up (backend, Airflow config, command),
    neither part in any message or log, and no connection is looked up under its name."""
    user, password = url.split("://", 1)[1].rsplit("@", 1)[0].split("%3A" if "%3A" in url else ":", 1)
    caplog.set_level(logging.DEBUG)
    texts = []
    with pytest.raises(ValueError) as failure:
        ObjectStoreBackend(StoreSettings(path=url))
    texts.append(_chain(failure.value))
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__PATH", url)  # airflow.cfg, as Airflow constructs it
    with pytest.raises(ValueError) as failure:
        ObjectStoreBackend()
    texts.append(_chain(failure.value))
    assert _exit_status(["ls"]) == 2  # the command reads the same setting
    assert _exit_status(["get", "--path", url, "task/d/r/t/-1/k"]) == 2
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    everything = "\n".join([*texts, caplog.text])
    for part in (user, password, *password.split("@")):
        assert part not in everything
    assert "credentials" in texts[0]


def test_every_expiry_python_allows_round_trips_and_the_past_ones_are_collected(
    make_backend: Callable[..., ObjectStoreBackend], tmp_path: Any
) -> None:
    """Years 1 to 9999: an expiry before the year 1000 was written unpadded ("999-...") and the key
    could never be read again, nor collected. One outside UTC's range is refused, nothing written."""
    backend = make_backend()
    utc = timezone.utc
    moments = {
        "year1": datetime(1, 1, 1, tzinfo=utc),
        "year999": datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=utc),
        "last": datetime.max.replace(tzinfo=utc),
        "offset": datetime(9999, 12, 31, 18, tzinfo=timezone(timedelta(hours=-5))),
    }
    for key, moment in moments.items():
        backend.set(SCOPE, key, "1", expires_at=moment)
    for key, moment in moments.items():
        assert backend.store.head(object_path(SCOPE, key)).expires_at == moment  # type: ignore[union-attr]
    assert [backend.get(SCOPE, key) for key in moments] == [None, None, "1", "1"]

    report = run_gc(backend.store, GCOptions(index_url=str(tmp_path / "index")))
    assert (report.deleted, report.live, report.errors) == (2, 2, 0), report.error_samples
    assert sorted(o.path for o in backend.store.iter_objects()) == sorted(
        object_path(SCOPE, key) for key in ("last", "offset")
    )
    again = run_gc(backend.store, GCOptions(index_url=str(tmp_path / "index")))  # from the GC's index
    assert (again.deleted, again.live, again.errors, again.index_damaged) == (0, 2, 0, 0), again.error_samples

    past_utc = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))  # year 10000 in UTC
    with pytest.raises(ValueError, match="outside the years 1 to 9999 in UTC"):
        backend.set(SCOPE, "too_late", "1", expires_at=past_utc)
    assert backend.store.head(object_path(SCOPE, "too_late")) is None


def test_an_unpadded_year_written_before_the_fix_still_reads() -> None:
    written = {META_LAYOUT: "1", META_MODE: "primary", META_EXPIRES: "999-12-31T23:59:59.000000Z"}
    metadata = ObjectMetadata.from_strings(written, "task/d/r/t/-1/k")
    assert metadata.expires_at == datetime(999, 12, 31, 23, 59, 59, tzinfo=timezone.utc) and metadata.is_expired()


def test_a_key_hashed_in_its_path_is_recorded_in_the_object_on_every_store(
    make_backend: Callable[..., ObjectStoreBackend], store_kind: str
) -> None:
    """Through each store's metadata (S3: ASCII, 2 KB in all; GCS and Azure: 8 KB, C# identifiers as
    names; memory and local: the envelope). The longest key Airflow's column holds (512 characters)
    fits all but S3 when each character takes 4 bytes: there it is left out, and the value is stored."""
    backend = make_backend()
    longest = "😀" * 512
    keys = ["k" * 200, "/".join(["warehouse"] * 14)[:135], "状态存储后端的长键名测试用例数据十八", "é" * 512, longest]
    for key in [*keys, "short"]:
        backend.set(SCOPE, key, "1")
    recorded = {key: backend.store.head(object_path(SCOPE, key)).key for key in keys}  # type: ignore[union-attr]
    assert recorded == {key: None if store_kind == "s3" and key == longest else key for key in keys}
    assert backend.store.head(object_path(SCOPE, "short")).key is None  # type: ignore[union-attr]
    assert backend.get(SCOPE, longest) == "1"
