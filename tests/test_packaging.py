"""Packaging: the Airflow provider registration, fail-fast settings, the command's version and help,
a releasable wheel and sdist that work without Airflow, and logging instead of prints.

The ``airflow``-marked tests run the real ``airflow`` command of this venv (Airflow 3.3) in a
subprocess with a fresh ``AIRFLOW_HOME``; neither command needs a migrated DB. The build test
runs ``python -m build`` from the repo root (isolated: it fetches setuptools from the package
index; the wheel is built from the sdist, so the sdist must be complete and no stale ``build/``
directory can leak into the wheel), ``twine check``, and installs the wheel into a new venv
without Airflow. The test scripts are run as README gives them, the system installer in its
``--check`` mode against a file tree and a PATH of the test's making.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import logging
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import objstore_backend
from objstore_backend.codec import COMPRESSIONS
from objstore_backend.config import KEYS, SECTION, StoreSettings
from objstore_backend.provider import get_provider_info

REPO = Path(__file__).resolve().parent.parent
DIST_NAME = "objstore-backend"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
OPTION_FIELDS = {"description", "version_added", "type", "example", "default"}
SUBCOMMANDS = {"ls", "get", "gc", "audit"}
#: calls on the root logger, which would bypass the ``objstore_backend`` logger hierarchy
ROOT_LOGGER_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "log", "basicConfig"}


def _options() -> dict[str, dict[str, Any]]:
    return get_provider_info()["config"][SECTION]["options"]


# -- the provider info itself --------------------------------------------------------------


def test_entry_point_registers_get_provider_info() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group="apache_airflow_provider") if ep.dist.name == DIST_NAME]
    assert [ep.value for ep in found] == ["objstore_backend.provider:get_provider_info"], (
        "entry point missing from the installed metadata: reinstall with pip install -e ."
    )
    assert found[0].load() is get_provider_info


def test_provider_info_is_valid_for_airflow() -> None:
    import airflow
    import jsonschema

    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    # Airflow compares this with the distribution's canonical name and refuses a mismatch.
    assert info["package-name"] == DIST_NAME == importlib.metadata.metadata(DIST_NAME)["Name"]
    assert info["description"].strip()
    assert list(info["config"]) == [SECTION]


def test_config_section_declares_every_key_fully() -> None:
    options = _options()
    assert tuple(options) == KEYS
    for key, option in options.items():
        # Airflow's runtime schema lets unknown fields through (its "additional_properties"
        # is misspelt): check the fields here, so a typo cannot hide.
        assert OPTION_FIELDS <= set(option) <= OPTION_FIELDS | {"sensitive"}, key
        assert option["description"].strip() and option["example"], key
        assert option["type"] in {"string", "integer"}, key
        assert isinstance(option["default"], str), key
        # Airflow runs each default through str.format(): "{}" would break config loading.
        assert "{" not in option["default"], key
        assert Version(option["version_added"]) <= Version(objstore_backend.__version__), key
    assert int(options["threshold_bytes"]["default"]) == 0 and options["threshold_bytes"]["type"] == "integer"
    assert all(name in options["compression"]["description"] for name in COMPRESSIONS)
    assert options["storage_options"].get("sensitive") is True


def test_config_defaults_mean_what_the_settings_default_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    defaults = {key: option["default"] for key, option in _options().items()}
    assert StoreSettings.from_mapping(defaults) == StoreSettings()
    assert StoreSettings().path == str(tmp_path / "state_store")


def test_config_examples_are_valid_settings() -> None:
    examples = {key: option["example"] for key, option in _options().items()}
    settings = StoreSettings.from_mapping(examples)
    assert settings.threshold_bytes == int(examples["threshold_bytes"])
    assert settings.storage_options == json.loads(examples["storage_options"])
    assert settings.compression == examples["compression"] != _options()["compression"]["default"]


# -- the real airflow command ---------------------------------------------------------------


def _airflow(home: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", **env_vars)
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.airflow
def test_airflow_providers_list_shows_the_package(tmp_path: Path) -> None:
    rows = json.loads(_airflow(tmp_path, "providers", "list", "--output", "json").stdout)
    ours = [row for row in rows if row["package_name"] == DIST_NAME]
    assert ours == [
        {
            "package_name": DIST_NAME,
            "description": get_provider_info()["description"].strip(),
            "version": importlib.metadata.version(DIST_NAME),
        }
    ]
    # and in the table a user sees by default
    table = _airflow(tmp_path, "providers", "list").stdout
    assert re.search(rf"^{re.escape(DIST_NAME)}\s+\|", table, re.MULTILINE), table


@pytest.mark.airflow
def test_airflow_config_list_shows_the_section(tmp_path: Path) -> None:
    options = _options()
    plain = _airflow(tmp_path, "config", "list", "--section", SECTION, "--color", "off").stdout
    assert [line.split("=")[0].strip("# ") for line in plain.splitlines() if "=" in line] == list(KEYS), plain

    documented = _airflow(
        tmp_path, "config", "list", "--section", SECTION, "--defaults", "--show-values", "--color", "off"
    ).stdout
    lines = [line.rstrip() for line in documented.splitlines()]
    assert f"[{SECTION}]" in lines
    assert "# " + get_provider_info()["config"][SECTION]["description"].strip() in lines
    for key, option in options.items():
        for description_line in option["description"].strip().splitlines():
            assert "# " + description_line in lines, (key, documented)
        assert f"# Example: {key} = {option['example']}" in lines, (key, documented)
        assert f"# Variable: AIRFLOW__{SECTION.upper()}__{key.upper()}" in lines, (key, documented)
        assert f"# {key} = {option['default']}".rstrip() in lines, (key, documented)

    # Airflow's config reads the section: an env var shows as the value, the others as defaults,
    # and the sensitive storage_options is hidden on request.
    values = _airflow(
        tmp_path,
        "config",
        "list",
        "--section",
        SECTION,
        "--show-values",
        "--hide-sensitive",
        "--color",
        "off",
        AIRFLOW__OBJSTORE_BACKEND__COMPRESSION="gzip",
        AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS='{"key": "AKIA-SECRET"}',
    ).stdout
    lines = [line.rstrip() for line in values.splitlines()]
    assert "compression = gzip" in lines and "threshold_bytes = 0" in lines, values
    assert "storage_options = < hidden >" in lines and "AKIA-SECRET" not in values, values
    # the airflow.cfg Airflow generated on first use carries the section with its defaults
    generated = (tmp_path / "airflow.cfg").read_text()
    assert f"\n[{SECTION}]\n" in generated and "\ncompression = none\n" in generated


# -- settings fail when the backend is made, not at the first write -------------------------


@pytest.fixture
def airflow_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Valid ``AIRFLOW__OBJSTORE_BACKEND__*`` env vars; a test spoils one of them."""
    for name in list(os.environ):
        if name.startswith(("AIRFLOW__OBJSTORE_BACKEND__", "OBJSTORE_BACKEND_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__PATH", f"memory://packaging-{os.getpid()}/state")
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS", "{}")
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__THRESHOLD_BYTES", "10")
    monkeypatch.setenv("AIRFLOW__OBJSTORE_BACKEND__COMPRESSION", "gzip")
    return monkeypatch


def test_backend_reads_airflow_env_settings(airflow_settings_env: pytest.MonkeyPatch) -> None:
    from objstore_backend.backend import ObjectStoreBackend

    settings = ObjectStoreBackend().settings
    assert settings.path.startswith("memory://packaging-")
    assert (settings.storage_options, settings.threshold_bytes, settings.compression) == ({}, 10, "gzip")


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "path",
            "s4://bucket/prefix/",
            r"\[objstore_backend\] path 's4://bucket/prefix/' has the URL scheme 's4'.*use one of s3",
        ),
        ("compression", "zstd", r"\[objstore_backend\] compression must be one of none, gzip, got 'zstd'"),
        ("threshold_bytes", "-1", r"\[objstore_backend\] threshold_bytes must be >= 0, got -1"),
        ("threshold_bytes", "1kb", r"\[objstore_backend\] threshold_bytes must be a whole number of bytes"),
        ("storage_options", '["endpoint_url"]', r"\[objstore_backend\] storage_options must be a JSON object"),
        ("storage_options", "endpoint_url=x", r"\[objstore_backend\] storage_options must be a JSON object"),
    ],
)
def test_bad_airflow_env_settings_fail_at_backend_construction(
    airflow_settings_env: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    from objstore_backend.backend import ObjectStoreBackend

    airflow_settings_env.setenv(f"AIRFLOW__OBJSTORE_BACKEND__{key.upper()}", value)
    with pytest.raises(ValueError, match=message):
        ObjectStoreBackend()


# -- the command's version and help ----------------------------------------------------------


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from objstore_backend.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0, argv
    return capsys.readouterr().out


def test_cli_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_cli(capsys, "--version")
    assert out.strip() == f"objstore-backend {importlib.metadata.version(DIST_NAME)}"
    assert objstore_backend.__version__ == importlib.metadata.version(DIST_NAME)


def test_cli_help_of_every_subcommand_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from objstore_backend.cli import build_parser

    top = _run_cli(capsys, "--help")
    assert "Exit status" in top
    (subparsers,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert SUBCOMMANDS <= set(subparsers.choices)
    for command in subparsers.choices:
        out = _run_cli(capsys, command, "--help")
        assert out.startswith(f"usage: objstore-backend {command}"), out
        assert "example" in out.lower(), (command, out)


# -- a releasable wheel and sdist --------------------------------------------------------------


def _run(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_and_sdist_build_check_and_work_without_airflow(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, cwd=REPO)  # the sdist, then the wheel from it
    version = importlib.metadata.version(DIST_NAME)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"objstore_backend-{version}-py3-none-any.whl"
    _run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"objstore_backend-{version}.dist-info/entry_points.txt").decode()
    source = REPO / "objstore_backend"
    package = {f"objstore_backend/{path.relative_to(source)}" for path in source.rglob("*.py")}
    assert {"objstore_backend/provider.py", "objstore_backend/cli.py", "objstore_backend/plugin/api.py"} <= package
    pages = {f"objstore_backend/plugin/static/{name}" for name in ("page.css", "page.js")}
    assert {name for name in names if not name.startswith(f"objstore_backend-{version}.dist-info/")} == package | {
        "objstore_backend/py.typed"
    } | pages
    assert "[airflow.plugins]\nobjstore_backend = objstore_backend.plugin:ObjectStorePlugin" in entry_points
    assert "[apache_airflow_provider]\nprovider_info = objstore_backend.provider:get_provider_info" in entry_points
    assert "objstore-backend = objstore_backend.cli:main" in entry_points
    with tarfile.open(sdist) as archive:
        members = set(archive.getnames())
    assert f"objstore_backend-{version}/objstore_backend/py.typed" in members

    venv = tmp_path / "venv"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith(("AIRFLOW", "OBJSTORE_BACKEND_"))
    }
    _run(sys.executable, "-m", "venv", venv, env=env)
    bin_dir = venv / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, env=env)

    helped = _run(bin_dir / "objstore-backend", "--help", env=env)
    assert helped.stdout.startswith("usage: objstore-backend")
    assert _run(bin_dir / "objstore-backend", "--version", env=env).stdout.strip() == f"objstore-backend {version}"
    imported = _run(
        bin_dir / "python",
        "-c",
        "import objstore_backend, objstore_backend.gc, objstore_backend.audit, objstore_backend.cli, "
        "objstore_backend.dags, objstore_backend.provider; "
        "print(objstore_backend.provider.get_provider_info()['package-name'])",
        env=env,
    )
    assert imported.stdout.strip() == DIST_NAME
    no_airflow = subprocess.run(
        [str(bin_dir / "python"), "-c", "import airflow"], env=env, capture_output=True, text=True
    )
    assert no_airflow.returncode != 0 and "No module named 'airflow'" in no_airflow.stderr
    # a real sweep of an (empty) local store, with the wheel's dependencies only
    swept = _run(bin_dir / "objstore-backend", "gc", "--path", tmp_path / "state", "--json", env=env)
    assert json.loads(swept.stdout.splitlines()[-1])["scanned"] == 0


# -- logging, not printing -------------------------------------------------------------------


def _library_modules() -> list[str]:
    """Every module of the package, subpackages included (transports, plugin), but the command."""
    names = [info.name for info in pkgutil.walk_packages(objstore_backend.__path__, "objstore_backend.")]
    return ["objstore_backend", *sorted(name for name in names if name != "objstore_backend.cli")]


def test_library_modules_log_and_never_print() -> None:
    modules = _library_modules()
    assert {"objstore_backend.store", "objstore_backend.transports.s3", "objstore_backend.plugin.app"} <= set(modules)
    for name in modules:
        module = importlib.import_module(name)
        tree = ast.parse(Path(module.__file__).read_text(), filename=module.__file__)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{name}:{node.lineno}"
            func = node.func
            assert not (isinstance(func, ast.Name) and func.id == "print"), f"print() in {where}"
            if isinstance(func, ast.Attribute):
                target = ast.unparse(func.value)
                assert target not in ("sys.stdout", "sys.stderr"), f"{target}.{func.attr}() in {where}"
                if target == "logging":
                    assert func.attr not in ROOT_LOGGER_CALLS, f"logging.{func.attr}() in {where}"
                if target == "logging" and func.attr == "getLogger":
                    assert [ast.unparse(arg) for arg in node.args] == ["__name__"], f"getLogger() in {where}"


def test_library_loggers_are_named_after_their_modules() -> None:
    modules = [importlib.import_module(name) for name in _library_modules()]
    loggers = {module.__name__: module.logger for module in modules if hasattr(module, "logger")}
    assert {"objstore_backend.store", "objstore_backend.gc"} <= set(loggers)
    for name, logger in loggers.items():
        assert isinstance(logger, logging.Logger) and logger.name == name


@pytest.mark.parametrize(
    "command",
    [
        # py.typed promises types to users' checkers: strict mode, configured in pyproject.toml
        ["mypy", "--no-incremental"],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
    ],
    ids=" ".join,
)
def test_code_passes_static_checks(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


# -- the test command -------------------------------------------------------------------------------


def _check_test_deps(root: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    script = REPO / "scripts" / "install-test-deps.sh"
    environment = {"PATH": str(bin_dir), "ROOT": str(root)}
    return subprocess.run([bash, str(script), "--check"], env=environment, capture_output=True, text=True)


def _executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_the_test_command_names_the_system_packages_a_fresh_machine_lacks(tmp_path: Path) -> None:
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None
    (bin_dir / "dirname").symlink_to(dirname)

    bare = _check_test_deps(root, bin_dir)
    assert bare.returncode == 1, bare.stderr
    packages = "chromium python3 util-linux postgresql nodejs npm prometheus"
    assert bare.stdout.splitlines() == [
        f"missing: {packages}",
        f"install with: apt-get update && apt-get install -y {packages}",
    ]

    for path in ("usr/bin/chromium", "usr/bin/python3", "usr/lib/postgresql/15/bin/pg_ctl"):
        _executable(root / path)
    for command in ("unshare", "setpriv", "node", "npm", "prometheus", "promtool"):
        _executable(bin_dir / command)
    complete = _check_test_deps(root, bin_dir)
    assert (complete.returncode, complete.stdout, complete.stderr) == (0, "", "")

    (root / "usr/bin/chromium").unlink()  # the plugin's browser test launches exactly this file
    (bin_dir / "setpriv").unlink()
    assert _check_test_deps(root, bin_dir).stdout.splitlines()[0] == "missing: chromium util-linux"


def test_ci_runs_the_readme_test_command_which_installs_first() -> None:
    quick_start = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("```", 2)[1]
    readme_commands = [line.split("#")[0].strip() for line in quick_start.splitlines()[1:] if line.strip()]
    assert readme_commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci_commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("bash ")]
    assert ci_commands == ["bash terraform-example/check.sh", "bash scripts/test.sh"]
    test_steps = [
        line for line in (REPO / "scripts" / "test.sh").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert test_steps.index("bash scripts/install-test-deps.sh") < test_steps.index("source scripts/venv.sh")
