"""Strict JSON, compression detection, and settings checked when they are made."""

from __future__ import annotations

import gc
import json

import pytest

from objstore_backend.codec import (
    check_json_document,
    compress,
    decode_json,
    decompress,
    encode_json,
    validate_json_text,
)
from objstore_backend.config import StoreSettings, split_connection_id


def test_encode_json_names_where_a_non_finite_float_hides() -> None:
    with pytest.raises(ValueError, match=r"\$\['a'\]\[1\]"):
        encode_json({"a": [None, float("-inf")]})
    assert encode_json({"a": [None, 1.5]}) == b'{"a":[null,1.5]}'


def test_encode_json_finds_non_finite_floats_in_any_container() -> None:
    with pytest.raises(ValueError, match=r"\$\['a'\]\[1\]\[0\]\['b'\]"):
        encode_json({"a": [None, ({"b": float("nan")},)]})
    with pytest.raises(ValueError, match=r"at \$:"):
        encode_json(float("inf"))


def test_validate_json_text_accepts_what_airflow_writes() -> None:
    text = json.dumps({"a": [1, "ü", None]})
    assert validate_json_text(text) == text.encode()


@pytest.mark.parametrize(
    "text, detail",
    [
        ("NaN", "NaN is not JSON .* at byte 0"),
        ("app_1234", "invalid character at byte 0, near .app_1234"),
        ("[1, -Infinity]", "-Infinity is not JSON .* at byte 4"),
        ("[1,]", "trailing comma"),
        ('{"a": 1} {"b": 2}', "trailing characters"),
        ("", "truncated"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('"\\ud800"', "truncated"),  # an escaped lone surrogate
        ('"\ud800"', "no UTF-8 for character 1"),  # a lone surrogate
    ],
)
def test_validate_json_text_refuses_what_is_not_strict_json(text: str, detail: str) -> None:
    with pytest.raises(ValueError, match=f"state value is not a valid JSON document.*{detail}"):
        validate_json_text(text)


def test_check_json_document_checks_the_syntax_and_decode_json_the_utf8() -> None:
    check_json_document(b'{"a": [1, 2.5, "\xc3\xbc"]}')
    with pytest.raises(ValueError, match="not a valid JSON document"):
        check_json_document(b'{"a": ')
    assert decode_json(b'{"a": [1e300, "\xc3\xbc"]}') == {"a": [1e300, "\u00fc"]}
    with pytest.raises(ValueError, match="utf-8"):
        decode_json(b'["\xff"]')
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_json(b"[" * 5000 + b"]" * 5000)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_decoding_a_large_document_leaves_the_cyclic_gc_as_it_was(enabled_before: bool) -> None:
    document = json.dumps({"rows": [{"i": i, "name": f"row-{i}"} for i in range(60_000)]}).encode()
    assert len(document) > 1 << 20  # large enough to decode with the collector paused
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        assert decode_json(document)["rows"][59_999] == {"i": 59_999, "name": "row-59999"}
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()


def test_compression_round_trip_and_detection() -> None:
    body = b'{"a": "' + b"x" * 1000 + b'"}'
    packed = compress(body, "gzip")
    assert len(packed) < len(body) and decompress(packed) == body
    assert decompress(body) == body
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        compress(body, "zip")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"compression": "lz5"}, "compression must be one of none, gzip"),
        ({"threshold_bytes": -1}, "threshold_bytes must be >= 0"),
        ({"threshold_bytes": "ten"}, "threshold_bytes must be a whole number"),
        ({"storage_options": "[1, 2]"}, "storage_options must be a JSON object"),
        ({"storage_options": "{not json"}, "storage_options must be a JSON object"),
        ({"storage_options": 42}, "storage_options must be a JSON object, got a int"),
        ({"path": "s4://bucket/prefix"}, "URL scheme 's4', which fsspec does not know: use one of s3, gs"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_key(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoreSettings(**{"path": "memory://x", **settings})


def test_storage_options_never_show_up_in_messages_or_repr() -> None:
    secret = "AKIA-SECRET-DO-NOT-LOG-123"
    settings = StoreSettings(path="memory://x", storage_options={"secret": secret})
    assert secret not in repr(settings)
    for raw in (f'{{"secret": "{secret}"', f'["{secret}"]'):
        with pytest.raises(ValueError) as caught:
            StoreSettings(path="memory://x", storage_options=raw)
        assert secret not in str(caught.value)


def test_connection_id_is_split_from_the_url() -> None:
    assert split_connection_id("s3://aws_default@bucket/p/") == ("aws_default", "s3://bucket/p/")
    assert split_connection_id("s3://bucket/p/") == (None, "s3://bucket/p/")
    assert split_connection_id("/local/dir") == (None, "/local/dir")


def test_azure_urls_and_their_connection_ids() -> None:
    assert split_connection_id("abfs://wasb_default@state/p/") == ("wasb_default", "abfs://state/p/")
    # Azure's own form: the user part is the container, the host names the account
    account_form = "abfss://state@myaccount.dfs.core.windows.net/airflow/state/"
    assert split_connection_id(account_form) == (None, account_form)
    assert StoreSettings(path=account_form, storage_options={"anon": False}).resolve() == (
        "abfss://state/airflow/state/",
        {"account_name": "myaccount", "anon": False},
    )
    given = StoreSettings(path="az://state@other.blob.core.windows.net/p", storage_options={"account_name": "mine"})
    assert given.resolve() == ("az://state/p", {"account_name": "mine"})  # explicit options win
    with pytest.raises(ValueError, match="use one of s3, gs, gcs, abfs, abfss, az, file, memory"):
        StoreSettings(path="wasbx://state/p")
