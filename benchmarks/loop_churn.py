"""Memory of a caller that runs a new event loop per call: ``asyncio.run(backend.aget(...))``.

Sync-to-async bridges and thread pools run short-lived loops; an async filesystem (s3fs, gcsfs)
is bound to one loop, so the store makes one per loop and must close and free it when that loop
ends. Starts moto's S3 server in its own process, then runs ``--calls`` calls of
``asyncio.run(backend.aget(...))`` and prints, every ``--every`` calls, the process's RSS, the
event loops and s3fs instances still alive, and the "Unclosed client session" errors logged.

Run: ``python benchmarks/loop_churn.py`` (1,000 calls, about 8 minutes: a new S3 client costs
about 0.5 s of botocore set-up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import resource
import subprocess
import sys
import weakref

from _servers import REPO, S3_OPTIONS, moto_server, s3_client

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings


class _CountUnclosed(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Unclosed" in record.getMessage()


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    from airflow.sdk.state import TaskScope

    unclosed = _CountUnclosed()
    logging.getLogger("asyncio").addHandler(unclosed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    print(f"commit {commit.stdout.strip()}, {platform.machine()}, Python {platform.python_version()}")
    with moto_server() as endpoint:
        s3_client(endpoint).create_bucket(Bucket="churn")
        options = {**S3_OPTIONS, "endpoint_url": endpoint}
        backend = ObjectStoreBackend(StoreSettings(path="s3://churn/state", storage_options=options))
        scope = TaskScope("d", "r", "t")
        backend.set(scope, "k", '"v"')
        loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

        async def one_call() -> str | None:
            loops.add(asyncio.get_running_loop())
            return await backend.aget(scope, "k")

        print("| calls | RSS MiB | event loops alive | s3fs instances alive | unclosed-session errors |")
        print("|---:|---:|---:|---:|---:|")
        for call in range(1, args.calls + 1):
            assert asyncio.run(one_call()) == '"v"'
            if call % args.every == 0 or call == 1:
                gc.collect()
                instances = sum(type(o).__name__ == "S3FileSystem" for o in gc.get_objects())
                print(f"| {call:,} | {_rss_mib():.0f} | {len(loops)} | {instances} | {unclosed.count} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
