"""objstore-backend side by side with the alternatives, measured the same way in one run.

Starts one request-counting moto S3 server in its own process and, for ``--sections gcs`` and
``azure``, fake-gcs-server and Azurite behind request-counting proxies in processes of their own
(``benchmarks/_servers.py``),
then compares on the same servers (``benchmarks/_contenders.py``):

* **ours**: ``objstore_backend.ObjectStoreBackend``;
* **common.io**: ``StateStoreObjectStorageBackend`` of apache-airflow-providers-common-io,
  configured with ``[common.io] state_store_objectstorage_path`` and an Airflow connection;
* **raw s3fs / gcsfs / adlfs**: plain ``pipe_file`` / ``cat_file`` / ``rm_file`` / ``rm(recursive)``,
  the floor (no Airflow, no metadata, no validation).

Sections (``--sections``, default all of them, in this order):

``ops``     requests (counted by the server) and median latency per set / get / delete, in
            primary mode (``set``/``get``/``delete``) and offload mode (``serialize_*_to_ref``
            / ``deserialize_*_from_ref`` / ``delete``); ``--ops`` of each;
``metrics`` the ops section for ours with metrics on (StatsD over UDP to a listener this
            script starts in its own process) beside ours with them off, interleaved, same server;
``clear``   one ``clear(all_map_indices=True)`` of a task with ``--map-indices`` map indices x 2
            keys, ``--clear-repeats`` times;
``large``   1, 16, 64 MiB of nested JSON (``--sizes``): round-trip (set + get) throughput
            against raw pipe/cat of the same bytes (``--repeats``), peak RSS of a process doing
            one round trip (each in its own process), orjson against the stdlib's json
            (``benchmarks/_large_values.py``);
``gc``      GC scan rate on ``--gc-objects`` objects and the GC command's peak RSS, with the
            functions of ``benchmarks/gc_scan.py`` (the full version);
``gcs``     ops and clear against fake-gcs-server, for ours and raw gcsfs (the common.io
            backend reaches gs:// only through apache-airflow-providers-google);
``azure``   ops, clear and the GC scan rate against Azurite behind a counting proxy, for
            ours and raw adlfs;
``import``  import time in fresh processes, median of ``--import-runs``.

The sections other than ``large`` live in ``benchmarks/_sections.py``. Prints markdown tables
on stdout (progress on stderr), headed by the machine and the commit measured. Ratios are
*ours / the other*: below 1 means ours takes less time (or memory). Run from the repository
root:

    python benchmarks/compare.py                                  # everything: several minutes
    python benchmarks/compare.py --sections ops,clear --ops 20    # a quick look
    python benchmarks/compare.py --sections metrics --ops 200     # the cost of metrics
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from functools import partial
from importlib.metadata import version
from pathlib import Path

from _contenders import S3_BUCKETS, Contender, RawFS, ours, s3_contender, why_no_common_io_on_gcs
from _large_values import large_tables
from _sections import azure_gc_table, clear_table, gc_table, import_table, metrics_table, ops_table
from _servers import REPO, azure_server, counts, gcs_server, moto_server, s3_client

SECTIONS = ("ops", "metrics", "clear", "large", "gc", "gcs", "azure", "import")
#: Where each S3 contender keeps the clear section's task, under its bucket.
CLEARED_PREFIX = {"ours": "state/task/bench/clear/", "common.io": "state/bench/clear/", "raw s3fs": "raw/bench/clear/"}


def code_line() -> str:
    """Which objstore_backend was measured: its directory, and the git commit if it is a checkout."""
    import objstore_backend

    where = Path(objstore_backend.__file__).resolve().parent
    try:
        git = ["git", "-C", str(REPO), "--no-optional-locks"]  # read-only: never refreshes the index
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "objstore_backend"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        return f"Code: `{where}` (not a git checkout)."
    suffix = f", with uncommitted changes to {', '.join(changed)}" if changed else ""
    return f"Code: objstore-backend at commit {commit}{suffix}."


def machine_line() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = (
        "apache-airflow",
        "apache-airflow-providers-common-io",
        "apache-airflow-providers-amazon",
        "moto",
        "s3fs",
        "gcsfs",
        "adlfs",
        "azure-storage-blob",
        "orjson",
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({model or 'unknown CPU'}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        + ", ".join(f"{package} {version(package)}" for package in packages)
    )


def s3_sections(args: argparse.Namespace, endpoint: str, workdir: Path) -> list[str]:
    """The sections on the moto server: ops, clear, large, gc, metrics (those asked for)."""
    s3 = s3_client(endpoint)
    for bucket in S3_BUCKETS.values():
        s3.create_bucket(Bucket=bucket)
    contenders = {name: s3_contender(name, endpoint) for name in S3_BUCKETS}
    in_order, count = list(contenders.values()), partial(counts, endpoint)

    def remaining(contender: Contender) -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=S3_BUCKETS[contender.name], Prefix=CLEARED_PREFIX[contender.name]
        )
        return sum(len(page.get("Contents", [])) for page in pages)

    rows = []
    if "ops" in args.sections:
        rows += ops_table("S3, moto", in_order, args.ops, count)
    if "clear" in args.sections:
        rows += clear_table("S3, moto", in_order, args.map_indices, count, remaining, args.clear_repeats)
    if "large" in args.sections:
        rows += large_tables(args.sizes, args.repeats, endpoint, contenders, workdir)
    if "gc" in args.sections:
        rows += gc_table(endpoint, args.gc_objects, s3)
    if "metrics" in args.sections:  # last: the process's metrics are on while it runs
        rows += metrics_table(endpoint, args.ops, count)
    return rows


def gcs_sections(args: argparse.Namespace, url: str) -> list[str]:
    """Ops and clear on fake-gcs-server (behind the counting proxy at ``url``): ours and raw gcsfs."""
    import gcsfs

    from tests.servers import create_gcs_bucket

    for bucket in ("bench-ours", "bench-raw"):
        create_gcs_bucket(url, bucket)
    options = {"token": "anon", "endpoint_url": url}
    fs = gcsfs.GCSFileSystem(**options, skip_instance_cache=True, use_listings_cache=False)
    contenders: list[Contender] = [ours("gs://bench-ours/state/", options), RawFS("raw gcsfs", fs, "bench-raw/raw")]
    missing, count = {"common.io": why_no_common_io_on_gcs()}, partial(counts, url)

    def remaining(contender: Contender) -> int:
        prefix = "bench-ours/state/task/bench/clear/" if contender.name == "ours" else "bench-raw/raw/bench/clear/"
        return len(fs.find(prefix))

    store = "GCS, fake-gcs-server"
    rows = ops_table(store, contenders, args.ops, count, missing)
    rows += clear_table(store, contenders, args.map_indices, count, remaining, args.clear_repeats, missing)
    batches = -(-args.map_indices * 2 // 100)
    rows.append(
        f"\nOn the emulator ours deletes one object per request (16 in flight): fake-gcs-server answers "
        f"JSON batch items with 400, so ours batches only on real GCS (`fs.on_google`), where the same clear "
        f"is 1 listing + {batches} batch request{'s' if batches > 1 else ''} of up to 100 conditional "
        f"deletes (the request shape is checked in tests/test_gcs.py; not timed here). gcsfs's `rm` also "
        f"deletes one object per request here, plus its directory placeholders."
    )
    return rows


def azure_sections(args: argparse.Namespace, url: str) -> list[str]:
    """Ops, clear and GC scan on Azurite (behind the counting proxy at ``url``): ours and raw adlfs."""
    import adlfs

    from tests.servers import azurite_connection_string, create_azure_container

    for container in ("bench-ours", "bench-raw", "bench-gc"):
        create_azure_container(url, container)
    options = {"connection_string": azurite_connection_string(url)}
    fs = adlfs.AzureBlobFileSystem(**options, skip_instance_cache=True, use_listings_cache=False)
    contenders: list[Contender] = [ours("abfs://bench-ours/state/", options), RawFS("raw adlfs", fs, "bench-raw/raw")]
    missing, count = {"common.io": "not run on Azure by this script"}, partial(counts, url)

    def remaining(contender: Contender) -> int:
        prefix = "bench-ours/state/task/bench/clear/" if contender.name == "ours" else "bench-raw/raw/bench/clear/"
        return len(fs.find(prefix))

    store = "Azure, Azurite"
    rows = ops_table(store, contenders, args.ops, count, missing)
    rows += clear_table(store, contenders, args.map_indices, count, remaining, args.clear_repeats, missing)
    rows += azure_gc_table(url, options, args.gc_objects)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--sizes", default="1,16,64", help="large values, in MiB (default 1,16,64)")
    parser.add_argument("--ops", type=int, default=50, help="operations per kind in the ops section (default 50)")
    parser.add_argument("--map-indices", type=int, default=300, help="map indices of the cleared task (default 300)")
    parser.add_argument("--clear-repeats", type=int, default=3, help="clears per backend (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="round trips per large value (default 3)")
    parser.add_argument("--gc-objects", type=int, default=3000, help="objects of the GC scan (default 3000)")
    parser.add_argument("--import-runs", type=int, default=5, help="processes per import (default 5)")
    args = parser.parse_args()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="objstore-bench-"))
    # Before gcsfs or Airflow is imported (this process and the ones it starts inherit them):
    # gcsfs probes the bucket type over gRPC first, which stalls ~60 s per call against an emulator.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow")  # never the user's own
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    output = [
        f"## Benchmarks: objstore-backend beside common.io {version('apache-airflow-providers-common-io')} "
        "and raw s3fs / gcsfs / adlfs\n",
        f"`{shlex.join(['python', 'benchmarks/compare.py', *sys.argv[1:]])}`",
        f"\nMachine: {machine_line()}.",
        f"\n{code_line()}",
        "\nServers: one moto S3 server (counting requests) in its own process; fake-gcs-server "
        "(memory backend) and Azurite (in memory) behind counting proxies in processes of their own. "
        "Everything runs on this "
        "machine, so times are dominated by the servers' own speed: compare the ratios.\n",
    ]
    try:
        with ExitStack() as servers:
            if set(args.sections) & {"ops", "metrics", "clear", "large", "gc"}:
                output += s3_sections(args, servers.enter_context(moto_server()), workdir)
            if "gcs" in args.sections:
                output += gcs_sections(args, servers.enter_context(gcs_server()))
            if "azure" in args.sections:
                output += azure_sections(args, servers.enter_context(azure_server()))
            if "import" in args.sections:
                output += import_table(args.import_runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(output))


if __name__ == "__main__":
    main()
