"""What the CronJobs' image adds to its base, against the Airflow image teams would reuse instead.

Carries out the Dockerfile's recipe (``tests/image_recipe.py``: the wheel, then the final
stage's install command into a fresh venv), and installs ``apache-airflow==3.3.2`` alone the
same way (a venv, the pins of constraints-dev.txt) as the floor of the ``apache/airflow:3.3.2``
image: that image holds this and more (providers, database clients, system packages). Each
venv is measured on disk (the bytes of its files) and as an image layer ships it (a
gzip-compressed tar, as ``docker push`` compresses layers). Prints a markdown table.

Needs the package registry (both installs download their wheels, no pip cache). Run from the
repository root (about 5 minutes here, mostly downloads):

    python benchmarks/image_size.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _servers import REPO  # also puts the repository on sys.path

from tests.image_recipe import BASE_PYTHON, Recipe, installed_bytes

AIRFLOW = "apache-airflow==3.3.2"
#: python:3.11-slim-bookworm, linux/amd64, from the official image's published metadata
#: (docker-library/repo-info, repos/python/{local,remote}/3.11-slim-bookworm.md): not measured here.
BASE_ON_DISK_MB = 130.0
BASE_COMPRESSED_MB = 47.8


def layer_bytes(root: Path, work: Path) -> int:
    """The size of ``root`` as a gzip-compressed tar: what a registry stores and a node pulls."""
    archive = work / f"{root.name}.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(root, arcname=root.name)
    size = archive.stat().st_size
    archive.unlink()
    return size


def airflow_venv(work: Path) -> Path:
    """``apache-airflow==3.3.2`` alone, in a venv made as the image's is, at the tested pins."""
    venv = work / "airflow-venv"
    subprocess.run([str(BASE_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--quiet"]
        + ["--no-cache-dir", "--constraint", str(REPO / "constraints-dev.txt"), AIRFLOW],
        check=True,
    )
    return venv


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="image-size-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        print("installing the image's venv (the Dockerfile's recipe)...", file=sys.stderr)
        ours = Recipe(work / "image").install().venv
        print(f"installing {AIRFLOW} alone...", file=sys.stderr)
        theirs = airflow_venv(work)
        rows = [
            ("objstore-backend with the Dockerfile's extras: the final stage's venv", ours),
            (f"{AIRFLOW} alone: the floor of apache/airflow:3.3.2", theirs),
        ]
        sizes = [(name, installed_bytes(venv) / 1e6, layer_bytes(venv, work) / 1e6) for name, venv in rows]

    print(
        f"\nInstalled sizes ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"`python benchmarks/image_size.py`)\n"
    )
    print("| what | on disk | as a gzip layer | image: base + this, on disk / compressed |")
    print("|---|---:|---:|---:|")
    for name, on_disk, layer in sizes:
        print(
            f"| {name} | {on_disk:.0f} MB | {layer:.0f} MB "
            f"| {BASE_ON_DISK_MB + on_disk:.0f} MB / {BASE_COMPRESSED_MB + layer:.0f} MB |"
        )
    print(
        f"\nBase python:3.11-slim-bookworm (amd64): {BASE_ON_DISK_MB:.0f} MB on disk, "
        f"{BASE_COMPRESSED_MB} MB compressed, as the official image's metadata states them."
    )


if __name__ == "__main__":
    main()
