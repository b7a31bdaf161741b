"""The command's options: each checked when parsed, by the subcommand that uses it, and `get`."""

from __future__ import annotations

from pathlib import Path

import pytest

from objstore_backend import cli
from objstore_backend.config import embedded_default_path

ENV_VARS = [
    "PATH",
    "STORAGE_OPTIONS",
    "JSON",
    "CONCURRENCY",
    "DRY_RUN",
    "SHARD",
    "AIRFLOW_DB",
    "OFFLOAD_GRACE",
    "DELETE_MODE",
    "FAIL_ON",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    for name in ENV_VARS:
        monkeypatch.delenv(f"OBJSTORE_BACKEND_{name}", raising=False)
        monkeypatch.delenv(f"AIRFLOW__OBJSTORE_BACKEND__{name}", raising=False)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one line a usage error prints; asserts exit status 2."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["gc", "--concurrency", "0"], "--concurrency"),
        (["audit", "--concurrency", "0"], "--concurrency"),  # used to hang: a semaphore of 0
        (["audit", "--concurrency", "many"], "--concurrency"),
        (["gc", "--shard", "4/4"], "--shard"),
        (["gc", "--shard", "1"], "--shard"),
        (["gc", "--offload-grace", "1h"], "--offload-grace"),
        (["gc", "--offload-grace", "-5"], "--offload-grace"),
        (["gc", "--offload-grace", "inf"], "--offload-grace"),
        (["gc", "--delete-mode", "fast"], "--delete-mode"),
        (["gc", "--airflow-db", "not a url"], "--airflow-db"),
        (["gc", "--airflow-db", "nosuchdb://reader:pw-9f2@db/airflow"], "--airflow-db"),
        (["audit", "--fail-on", "fatal"], "--fail-on"),
        (["ls", "--storage-options", "[1]"], "--storage-options"),
        (["ls", "--storage-options", "{"], "--storage-options"),
        (["get", "--path", "nosuchscheme://bucket/p", "k"], "--path"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_bad_options_are_refused_when_parsed(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = usage_error(capsys, [*argv, "--path", str(tmp_path)] if "--path" not in argv else argv)
    assert f"argument {option}:" in err
    assert "pw-9f2" not in err  # a DB password is never repeated


@pytest.mark.parametrize(
    "name, value, used_by, option",
    [
        ("CONCURRENCY", "0", "audit", "--concurrency"),
        ("CONCURRENCY", "x", "gc", "--concurrency"),
        ("OFFLOAD_GRACE", "1h", "gc", "--offload-grace"),
        ("DRY_RUN", "maybe", "gc", "--dry-run"),
        ("JSON", "maybe", "audit", "--json"),
        ("SHARD", "1", "gc", "--shard"),
        ("DELETE_MODE", "fast", "gc", "--delete-mode"),
        ("AIRFLOW_DB", "not a url", "gc", "--airflow-db"),
        ("FAIL_ON", "fatal", "audit", "--fail-on"),
    ],
)
def test_env_var_defaults_are_checked_only_by_the_subcommand_using_them(
    name: str,
    value: str,
    used_by: str,
    option: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(f"OBJSTORE_BACKEND_{name}", value)
    err = usage_error(capsys, [used_by, "--path", str(tmp_path)])
    assert f"argument {option}:" in err and f"OBJSTORE_BACKEND_{name}" in err
    assert cli.main(["ls", "--path", str(tmp_path)]) == 0  # the other subcommands do not care


@pytest.mark.parametrize("prefix", ["OBJSTORE_BACKEND_", "AIRFLOW__OBJSTORE_BACKEND__"])
def test_store_settings_from_env_are_checked_by_every_subcommand(
    prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"{prefix}STORAGE_OPTIONS", "{")
    assert "argument --storage-options:" in usage_error(capsys, ["ls"])
    monkeypatch.delenv(f"{prefix}STORAGE_OPTIONS")
    monkeypatch.setenv(f"{prefix}PATH", "nosuchscheme://bucket/p")
    for command in (["ls"], ["get", "k"], ["gc"], ["audit"]):
        err = usage_error(capsys, command)
        assert "argument --path:" in err and f"{prefix}PATH" in err


def test_store_settings_come_from_the_flag_then_our_env_then_airflows(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> tuple[str, dict]:
        args = cli.build_parser().parse_args(["ls", *argv])
        return args.path, args.storage_options

    assert parsed() == ("", {})
    assert cli.StoreSettings(path="").path == embedded_default_path()
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__PATH", "s3://airflow-cfg/p")
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS", '{"endpoint_url": "http://airflow"}')
    assert parsed() == ("s3://airflow-cfg/p", {"endpoint_url": "http://airflow"})
    monkeypatch.setenv("OBJSTORE_BACKEND_PATH", "gs://ours/p")
    monkeypatch.setenv("OBJSTORE_BACKEND_STORAGE_OPTIONS", '{"endpoint_url": "http://ours"}')
    assert parsed() == ("gs://ours/p", {"endpoint_url": "http://ours"})
    assert parsed("--path", "memory://flag", "--storage-options", "{}") == ("memory://flag", {})


# -- get -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '{"id": 1180591620717411303424}',  # 2**70: beyond a double
        "0.1000000000000000000000000000000000000001",
        "1e400",
        "[1.0, -0.0, 1E+2, 10000000000000000000000000000001]",
        '"caf\\u00e9 \\ud83d\\ude00"',
        '{"b": 1,   "a": [ ]}',
    ],
)
def test_get_prints_the_value_exactly_as_stored(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from airflow.sdk.state import TaskScope

    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.layout import object_path

    backend = ObjectStoreBackend(cli.StoreSettings(path=str(tmp_path)))
    scope = TaskScope("d", "r", "t")
    backend.set(scope, "k", value)
    assert cli.main(["get", "--path", str(tmp_path), object_path(scope, "k")]) == 0
    assert capsys.readouterr().out == backend.get(scope, "k") + "\n" == value + "\n"


def test_get_of_a_damaged_object_fails_with_exit_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from objstore_backend.store import ObjectMetadata, ObjectStore

    ObjectStore(str(tmp_path)).write("task/d/r/t/-1/k", b'{"cut": ', ObjectMetadata("primary"))
    assert cli.main(["get", "--path", str(tmp_path), "task/d/r/t/-1/k"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "task/d/r/t/-1/k: the stored value is not a JSON document" in captured.err


def test_ls_shows_the_key_an_object_records_for_its_hashed_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from airflow.sdk.state import TaskScope

    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings
    from objstore_backend.layout import object_path
    from objstore_backend.store import ObjectMetadata

    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    scope = TaskScope("d", "r", "t", -1)
    long_key, unrecorded = "状态存储后端的长键名测试用例数据十八", "y" * 200
    backend.set(scope, long_key, "1")
    backend.set(scope, "short", "2")
    backend.store.write(object_path(scope, unrecorded), b"3", ObjectMetadata("primary"))  # as written before
    assert cli.main(["ls", "--path", str(tmp_path), "--json"]) == 0
    rows = {row["path"]: row["key"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows == {object_path(scope, k): k for k in (long_key, "short")} | {object_path(scope, unrecorded): None}
    assert cli.main(["ls", "--path", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"(key {long_key!r})" in text and "(key not recorded)" in text
