"""The ``objstore-backend`` command: look inside a state store without Airflow.

In primary mode the Airflow UI and REST API cannot show state values (they read the metadata
DB, where primary mode writes nothing); ``ls`` and ``get`` show them from the bucket.
Settings come from flags, else ``OBJSTORE_BACKEND_<KEY>``, else Airflow's
``AIRFLOW__OBJSTORE_BACKEND__<KEY>`` env vars, else the embedded default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from objstore_backend import __version__
from objstore_backend.audit import LEVELS, AuditReport, run_audit
from objstore_backend.config import ENV_PREFIX, StoreSettings
from objstore_backend.errors import CorruptObjectError
from objstore_backend.gc import GCOptions, GCReport, parse_shard, run_gc
from objstore_backend.layout import parse
from objstore_backend.store import ObjectStore

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _subcommand(
    commands: Any, name: str, func: Any, *, summary: str, description: str, examples: list[str], exit_status: str
) -> argparse.ArgumentParser:
    """A subcommand that works on one store: --path and --storage-options, examples in --help."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + "".join(f"  objstore-backend {example}\n" for example in examples) + exit_status,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--path",
        help="base URL of the store (default: $OBJSTORE_BACKEND_PATH, "
        "$AIRFLOW__OBJSTORE_BACKEND__PATH, else $AIRFLOW_HOME/state_store)",
    )
    parser.add_argument(
        "--storage-options", metavar="JSON", help="fsspec storage options as a JSON object (e.g. an endpoint_url)"
    )
    parser.set_defaults(func=func)
    return parser


def _sweep_options(parser: argparse.ArgumentParser, *, json_help: str, concurrency_help: str) -> None:
    """The flags the GC and the audit share, each defaulting to its OBJSTORE_BACKEND_* env var."""
    parser.add_argument("--json", action="store_true", default=_env_flag("JSON"), help=json_help)
    parser.add_argument(
        "--concurrency", type=int, default=int(_env("CONCURRENCY", "32")), help=f"{concurrency_help} (default 32)"
    )


_SIMPLE_EXIT = "exit status: 0 success, 1 an operation failed, 2 bad usage or settings"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="objstore-backend",
        description="Inspect and maintain an Airflow state store kept in object storage.",
        epilog="Exit status: 0 success, 1 an operation failed, 2 bad usage or settings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = _subcommand(
        commands,
        "ls",
        cmd_ls,
        summary="list stored keys with their mode, expiry and size",
        description="List the keys under the base path (or under --prefix), one line each.",
        examples=["ls --path s3://bucket/airflow/state/ --prefix task/my_dag/"],
        exit_status=_SIMPLE_EXIT,
    )
    ls.add_argument("--prefix", default="", help="only keys under this path (relative to the base)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    get = _subcommand(
        commands,
        "get",
        cmd_get,
        summary="print one stored value",
        description="Print the JSON value stored at PATH (as `ls` shows it) and, with -m, its metadata.",
        examples=["get -m task/my_dag/manual__2026-01-01/extract/-1/job_id"],
        exit_status=_SIMPLE_EXIT,
    )
    get.add_argument("object_path", metavar="PATH", help="the key's path relative to the base")
    get.add_argument("-m", "--metadata", action="store_true", help="also print mode and expiry")

    gc = _subcommand(
        commands,
        "gc",
        cmd_gc,
        summary="delete expired (and orphaned offload) objects",
        description=(
            "Sweep the store once: delete primary-mode objects whose expiry has passed and, with\n"
            "--airflow-db, offload objects Airflow no longer references. Never deletes never-expiring,\n"
            "unexpired, foreign or unreadable objects. Every flag can also be set as an env var\n"
            f"{ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}SHARD=0/4)."
        ),
        examples=[
            "gc --path s3://bucket/airflow/state/ --dry-run",
            "gc --json --shard $JOB_COMPLETION_INDEX/4 --concurrency 64 --list-concurrency 8",
            "gc --airflow-db postgresql://gc_reader@db/airflow --offload-grace 3600",
        ],
        exit_status="exit status: 0 all went well, 1 some read or delete failed (see errors), 2 bad usage",
    )
    _sweep_options(
        gc, json_help="print the summary as one JSON object on the last line", concurrency_help="requests in flight"
    )
    gc.add_argument("--dry-run", action="store_true", default=_env_flag("DRY_RUN"), help="delete nothing")
    gc.add_argument(
        "--shard",
        type=parse_shard,
        default=_env("SHARD", "0/1"),
        metavar="I/N",
        help="sweep only shard I of N, a slice of the key space (a Kubernetes Indexed Job runs one per pod)",
    )
    gc.add_argument(
        "--list-concurrency",
        type=_positive_int,
        default=_env("LIST_CONCURRENCY", "4"),
        metavar="N",
        help="listers on disjoint key ranges at once in this shard (default 4)",
    )
    gc.add_argument(
        "--full",
        action="store_true",
        default=_env_flag("FULL"),
        help="read every object's metadata again instead of trusting the index of the last sweep",
    )
    gc.add_argument(
        "--index",
        metavar="URL",
        default=_env("INDEX") or None,
        help="where the GC keeps its index and key-range plan (default: ~gc-index/ under the base path)",
    )
    gc.add_argument(
        "--airflow-db",
        metavar="URL",
        default=_env("AIRFLOW_DB"),
        help="read-only SQLAlchemy URL of Airflow's metadata DB, to reclaim orphaned offload objects",
    )
    gc.add_argument(
        "--offload-grace",
        type=float,
        default=float(_env("OFFLOAD_GRACE", "3600")),
        metavar="SECONDS",
        help="never reclaim an offload object younger than this (default 3600)",
    )
    gc.add_argument(
        "--delete-mode",
        choices=("batch", "single"),
        default=_env("DELETE_MODE", "batch"),
        help="batch: DeleteObjects with per-key ETag conditions (AWS S3, GCS); single: one "
        "conditional delete per key, for S3-compatible servers that ignore batch conditions",
    )

    audit = _subcommand(
        commands,
        "audit",
        cmd_audit,
        summary="inventory the store and check the bucket's configuration",
        description=(
            "Read-only. Inventory: keys and bytes by mode, scope kind and DAG, the expired-but-not-\n"
            "collected backlog, never-expiring keys, offload objects, the largest values, foreign or\n"
            "unreadable objects. Findings: bucket settings that would destroy live state or keep dead\n"
            "state forever (lifecycle rules, versioning, soft delete, retention, encryption, public access)."
        ),
        examples=[
            "audit --path s3://bucket/airflow/state/",
            "audit --path gs://bucket/airflow/state/ --json --fail-on warning",
        ],
        exit_status="exit status: 0 no finding at or above --fail-on, 1 some finding is, or the audit failed; "
        "2 bad usage",
    )
    _sweep_options(
        audit,
        json_help='print {"inventory": ..., "findings": [...]} as one JSON document',
        concurrency_help="HEAD requests in flight while taking the inventory",
    )
    audit.add_argument(
        "--fail-on",
        choices=LEVELS,
        default=_env("FAIL_ON", "error"),
        help="exit 1 when a finding is at this level or above (default error)",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _env(name: str, default: str = "") -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_flag(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes")


def open_store(args: argparse.Namespace) -> ObjectStore:
    settings = StoreSettings.from_env(path=args.path, storage_options=args.storage_options)
    return ObjectStore(*settings.resolve())


def _describe(store: ObjectStore, path: str, size: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "bytes": size}
    location = parse(path)
    if location is None:
        return {**entry, "mode": "foreign"}
    try:
        metadata = store.head(path)
    except CorruptObjectError:
        return {**entry, "mode": "unreadable"}
    if metadata is None:  # deleted since the listing
        return {**entry, "mode": "gone"}
    expires = metadata.expires_at.isoformat() if metadata.expires_at else None
    return {**entry, "mode": metadata.mode, "expires_at": expires, "expired": metadata.is_expired()}


def cmd_ls(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = (_describe(store, listed.path, listed.size) for listed in store.iter_objects(args.prefix))
    for row in rows:
        if args.json:
            print(orjson.dumps(row).decode())
        else:
            expiry = row.get("expires_at") or {"primary": "never", "offload": "(kept in Airflow's DB)"}.get(
                row["mode"], "-"
            )
            flag = " (expired)" if row.get("expired") else ""
            print(f"{row['mode']:<8} {row['bytes']:>10}  {expiry:<32}{flag} {row['path']}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    store = open_store(args)
    found = store.read(args.object_path)
    if found is None:
        print(f"objstore-backend: no object at {store.display_path(args.object_path)}", file=sys.stderr)
        return EXIT_FAILED
    if args.metadata:
        expires = found.metadata.expires_at.isoformat() if found.metadata.expires_at else "never"
        print(f"# mode={found.metadata.mode} expires_at={expires} expired={found.metadata.is_expired()}")
    print(orjson.dumps(orjson.loads(found.body), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _gc_options(args: argparse.Namespace) -> GCOptions:
    reconciler = None
    if args.airflow_db:
        from objstore_backend.reconcile import AirflowDBReconciler

        reconciler = AirflowDBReconciler(args.airflow_db)
    return GCOptions(
        dry_run=args.dry_run,
        concurrency=args.concurrency,
        shard=args.shard if isinstance(args.shard, tuple) else parse_shard(args.shard),
        list_concurrency=args.list_concurrency,
        full=args.full,
        index_url=args.index,
        offload_grace=timedelta(seconds=args.offload_grace),
        batched_deletes=args.delete_mode == "batch",
        reconciler=reconciler,
    )


def _print_report(report: GCReport) -> None:
    rows = [(name, value) for name, value in report.as_dict().items() if name not in ("error_samples", "would_delete")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    for path in report.would_delete:
        print(f"would delete  {path}")
    for sample in report.error_samples:
        print(f"error  {sample}")


def cmd_gc(args: argparse.Namespace) -> int:
    store = open_store(args)
    options = _gc_options(args)
    if sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        with tqdm(desc=f"gc {store.url}", unit=" objects", file=sys.stderr) as bar:

            def advance(scanned: int) -> None:
                bar.update(scanned)

            report = run_gc(store, options, progress=advance)
    else:
        report = run_gc(store, options)
    if args.json:
        print(orjson.dumps(report.as_dict()).decode())
    else:
        _print_report(report)
    return EXIT_FAILED if report.errors else EXIT_OK


def _print_audit(report: AuditReport) -> None:
    inventory = report.inventory
    print(f"keys {inventory.keys:,}  bytes {inventory.bytes:,}")
    for title, table in (("by mode", inventory.by_mode), ("by scope kind", inventory.by_kind)):
        print(
            f"{title}: " + ", ".join(f"{name} {row['keys']:,} keys / {row['bytes']:,} B" for name, row in table.items())
        )
    backlog = inventory.expired_backlog
    print(
        f"expired, not yet collected: {backlog['keys']:,} keys / {backlog['bytes']:,} B"
        + (f" (oldest expiry {backlog['oldest_expiry']})" if backlog["oldest_expiry"] else "")
    )
    print(
        f"never expire: {inventory.never_expire:,}   offload: {inventory.offload:,}   "
        f"foreign: {inventory.foreign_count:,}   unreadable: {inventory.unreadable_count:,}"
    )
    for row in inventory.top_dags:
        print(f"  dag {row['dag_id']}: {row['keys']:,} keys / {row['bytes']:,} B")
    for row in inventory.largest[:5]:
        print(f"  largest: {row['bytes']:,} B  {row['path']}")
    print(f"findings: {len(report.findings)}")
    for finding in report.findings:
        print(f"  {finding.level.upper():<8} {finding.code}: {finding.message}")


def cmd_audit(args: argparse.Namespace) -> int:
    report = run_audit(open_store(args), concurrency=args.concurrency)
    if args.json:
        print(orjson.dumps(report.as_dict()).decode())
    else:
        _print_audit(report)
    return EXIT_FAILED if report.fails(args.fail_on) or report.inventory.errors else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
        return status
    except ValueError as exc:  # bad settings
        print(f"objstore-backend: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"objstore-backend: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
