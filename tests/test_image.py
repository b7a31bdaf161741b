"""The container image of the GC and audit CronJobs (the top-level Dockerfile), without a Docker
daemon: hadolint lints the Dockerfile; tests/image_recipe.py carries out its stages (the wheel
built as the builder stage builds it, then the final stage's install command in a fresh venv);
and the CronJobs' own command lines run from that venv as the pods run them: as UID 65532 with
the image's environment, a read-only root filesystem and only a fresh /tmp writable, against a
local store, S3 (moto) and GCS (fake-gcs-server).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import object_path
from tests.image_recipe import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Image,
    Recipe,
    context_sources,
    env_assignments,
    installed_bytes,
    parse_dockerfile,
)

KUBERNETES = REPO / "terraform-example" / "kubernetes"
CRONJOBS = {"gc": KUBERNETES / "base/gc-cronjob.yaml", "audit": KUBERNETES / "base/audit-cronjob.yaml"}
HADOLINT = Path(sys.executable).parent / "hadolint"
#: What the final stage may add to its base on disk: the budget in docs/image.md (measured by
#: benchmarks/image_size.py, which compares it with Airflow's).
VENV_BUDGET_BYTES = 150_000_000


def _pod_spec(job: str) -> dict[str, Any]:
    cronjob = yaml.safe_load(CRONJOBS[job].read_text())
    return dict(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def _cronjob_container(job: str) -> dict[str, Any]:
    (container,) = _pod_spec(job)["containers"]
    return dict(container)


# -- the Dockerfile itself ------------------------------------------------------------------------


def _hadolint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "-"], input=text, capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_hadolint_finds_nothing_and_every_ignore_says_why() -> None:
    text = DOCKERFILE.read_text()
    linted = _hadolint(text)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")
    # the linter is awake: the same file without --no-cache-dir is flagged
    spoiled = _hadolint(text.replace(" --no-cache-dir", ""))
    assert spoiled.returncode == 1 and "DL3042" in spoiled.stdout, spoiled.stdout
    for line in text.splitlines():
        if "hadolint ignore=" in line:
            assert re.search(r"hadolint ignore=[\w,]+\s+\S", line), f"an ignore without its reason: {line}"


def test_dockerfile_builds_a_small_pinned_non_root_image() -> None:
    dockerfile = parse_dockerfile()
    builder, final = dockerfile.stage("builder"), dockerfile.final
    for stage in (builder, final):
        assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", stage.base), stage.base
    assert final.one("USER").args == "65532:65532"
    assert final.one("ENTRYPOINT").args == '["objstore-backend"]'
    # nothing copied into the final stage: the wheel and the pins are mounted for the one RUN
    assert not final.all("COPY") and not final.all("ADD")
    (install,) = final.all("RUN")
    assert "--only-binary=:all:" in install.args and "--no-cache-dir" in install.args
    assert not re.search(r"apt-get|apk |gcc|build-essential", install.args)
    assert "--constraint /constraints.txt" in install.args
    assert any("source=constraints-dev.txt,target=/constraints.txt" in f for f in install.flags.values())


def test_extras_are_the_stores_and_never_airflow() -> None:
    (extras_arg,) = (i.args for i in parse_dockerfile().final.all("ARG") if i.args.startswith("EXTRAS="))
    extras = set(extras_arg.removeprefix("EXTRAS=").split(","))
    declared = set(importlib.metadata.metadata("objstore-backend").get_all("Provides-Extra") or [])
    assert extras <= declared
    assert {"s3", "gcs"} <= extras and not extras & {"airflow", "dev", "reconcile"}
    assert ("azure" in extras) == ("azure" in declared), "install the azure extra once pyproject.toml has it"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_uses() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything out, then what the build uses back in"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert context_sources(parse_dockerfile()) == admitted
    assert all((REPO / path).exists() for path in admitted)


def test_the_manifests_run_the_image_as_the_dockerfile_builds_it() -> None:
    final = parse_dockerfile().final
    uid, gid = (int(part) for part in final.one("USER").args.split(":"))
    env = {name: value for i in final.all("ENV") for name, value in env_assignments(i.args, {}).items()}
    overlay_images = set()
    for cloud in ("aws", "gcp"):
        kustomization = yaml.safe_load((KUBERNETES / f"overlays/{cloud}/kustomization.yaml").read_text())
        overlay_images |= {image["name"] for image in kustomization["images"]}
    for job in CRONJOBS:
        container = _cronjob_container(job)
        assert container["image"].rsplit(":", 1)[0] in overlay_images
        assert container["command"] == json.loads(final.one("ENTRYPOINT").args)
        security = _pod_spec(job)["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
        assert {e["name"]: e["value"] for e in container["env"]}["HOME"] == env["HOME"] == "/tmp"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


# -- the recipe, carried out -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The final stage's venv, in a directory every user can read (pytest's tmp_path is private)."""
    work = Path(tempfile.mkdtemp(prefix="objstore-image-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        yield Recipe(work).install()
    finally:
        shutil.rmtree(work)


def run_in_pod(image: Image, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` as the CronJob's container runs it: the image's ENV and USER (no groups, no new
    privileges), the root filesystem read-only, a fresh tmpfs on /tmp (the pod's emptyDir)."""
    uid, gid = image.user.split(":")
    size = _cronjob_container("gc")["resources"]["limits"]["ephemeral-storage"].removesuffix("Mi") + "m"
    sandbox = (
        f"mount -o remount,bind,ro / && mount -t tmpfs -o mode=1777,size={size} tmpfs /tmp && cd {image.workdir} && "
        f'exec setpriv --reuid {uid} --regid {gid} --clear-groups --no-new-privs -- "$@"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", sandbox, "sh", *argv],
        env={**image.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.image
def test_the_pod_can_write_only_to_tmp(image: Image) -> None:
    probe = (
        "import json, os\n"
        "def writable(path):\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        f"print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), writable('/tmp/x'), writable('/var/tmp/x'), "
        f"writable('{image.venv}/x'), os.environ['HOME']]))"
    )
    ran = run_in_pod(image, ["python", "-c", probe])
    assert ran.returncode == 0, ran.stderr
    # /var/tmp is writable by anyone on this machine: only the read-only root stops the write
    assert json.loads(ran.stdout) == [65532, 65532, [], True, False, False, "/tmp"]


@pytest.mark.image
def test_the_venv_holds_the_stores_at_the_pinned_versions_within_budget_but_no_airflow(image: Image) -> None:
    listing = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    ran = run_in_pod(image, ["python", "-c", listing])
    assert ran.returncode == 0, ran.stderr
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in json.loads(ran.stdout).items()}
    assert {"objstore-backend", "s3fs", "gcsfs", "orjson", "msgspec", "fsspec"} <= set(installed)
    assert not [name for name in installed if "airflow" in name or name in ("pip", "setuptools")]
    pins = {}
    for line in (REPO / "constraints-dev.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert {name: installed[name] for name in installed if name != "objstore-backend"} == {
        name: pins[name] for name in installed if name != "objstore-backend"
    }
    no_airflow = run_in_pod(image, ["python", "-c", "import airflow"])
    assert no_airflow.returncode == 1 and "No module named 'airflow'" in no_airflow.stderr
    assert installed_bytes(image.venv) < VENV_BUDGET_BYTES


PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
EXPIRED = [(TaskScope("etl", "run-1", "load", -1), "cursor"), (AssetScope(asset_id=7), "old")]


def _populate(path: str, options: dict[str, Any]) -> ObjectStoreBackend:
    """Two expired keys, a live one and one that never expires."""
    backend = ObjectStoreBackend(StoreSettings(path=path, storage_options=options))
    for scope, key in EXPIRED:
        backend.set(scope, key, '"gone"', expires_at=PAST)
    backend.set(TaskScope("etl", "run-1", "load", -1), "live", '"1"', expires_at=FUTURE)
    backend.set(AssetScope(asset_id=7), "watermark", '"2026-01-01"')
    return backend


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request: pytest.FixtureRequest, image: Image) -> Iterator[tuple[ObjectStoreBackend, dict[str, str]]]:
    """A populated store the pod can reach, and the ConfigMap's settings that point at it."""
    settings: dict[str, str] = {}
    if request.param == "local":
        # on the image's read-only side, owned by the pod's user (as its volume would be)
        path, options = str(image.venv.parent / f"state-{uuid.uuid4().hex[:8]}"), {}
    elif request.param == "s3":
        path, options = (
            f"s3://{request.getfixturevalue('s3_bucket')}/airflow/state/",
            request.getfixturevalue("s3_options"),
        )
    else:
        path, options = (
            f"gs://{request.getfixturevalue('gcs_bucket')}/airflow/state/",
            request.getfixturevalue("gcs_options"),
        )
        # as the GCP overlay's ConfigMap sets it (the emulator has no Storage Control API either)
        settings["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    backend = _populate(path, options)
    if request.param == "local":
        for directory, _, files in os.walk(path):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(name, 65532, 65532)
    yield backend, {"OBJSTORE_BACKEND_PATH": path, "OBJSTORE_BACKEND_STORAGE_OPTIONS": json.dumps(options), **settings}
    if request.param == "local":
        shutil.rmtree(path)


def _cronjob_run(image: Image, job: str, config: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """The CronJob's command line, $(VAR)s expanded from its environment as the kubelet does."""
    container = _cronjob_container(job)
    env = {**config, **{e["name"]: e["value"] for e in container["env"]}}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in container["command"] + container["args"]]
    return run_in_pod(image, [*argv, *extra], env)


@pytest.mark.image
def test_the_cronjobs_commands_run_in_the_image(image: Image, store: tuple[ObjectStoreBackend, dict[str, str]]) -> None:
    backend, config = store
    before = sorted(o.path for o in backend.store.iter_objects())
    assert len(before) == 4

    gc = _cronjob_run(image, "gc", config, "--dry-run")
    assert gc.returncode == 0, gc.stderr
    summary = json.loads(gc.stdout.splitlines()[-1])
    assert (summary["dry_run"], summary["scanned"], summary["expired"], summary["deleted"]) == (True, 4, 2, 0)
    assert summary["errors"] == 0, summary["error_samples"]
    assert sorted(summary["would_delete"]) == sorted(object_path(scope, key) for scope, key in EXPIRED)

    audit = _cronjob_run(image, "audit", config)  # --fail-on error, as the CronJob runs it
    assert audit.returncode == 0, audit.stdout + audit.stderr
    document = json.loads(audit.stdout.splitlines()[-1])
    inventory = document["inventory"]
    assert (inventory["keys"], inventory["expired_backlog"]["keys"], inventory["never_expire"]) == (4, 2, 1)
    assert inventory["errors"] == [] and not [f for f in document["findings"] if f["level"] == "error"]
    if backend.store.protocol == "file":
        assert document["findings"] == []  # owned by the pod's user, private

    assert sorted(o.path for o in backend.store.iter_objects()) == before  # a dry run and an audit
