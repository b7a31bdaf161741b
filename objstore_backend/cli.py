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
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import orjson

from objstore_backend import __version__
from objstore_backend.audit import LEVELS, AuditReport, run_audit
from objstore_backend.codec import COMPRESSIONS
from objstore_backend.config import AIRFLOW_ENV_PREFIX, ENV_PREFIX, KEYS, StoreSettings, parse_storage_options
from objstore_backend.errors import CorruptObjectError
from objstore_backend.gc import GCOptions, GCReport, parse_shard, run_gc
from objstore_backend.layout import is_hashed, original_key, parse
from objstore_backend.metrics import report_audit, report_gc, shutdown
from objstore_backend.reconcile import AirflowDBReconciler, create_db_engine
from objstore_backend.store import ObjectStore, json_text

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line naming the option (and the env var it came from), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _FromEnv(str):
    """An option's default read from an env var: checked like the flag, only by its subcommand
    (argparse converts a subcommand's string defaults when that subcommand is parsed)."""

    env_var: str

    def __new__(cls, value: str, env_var: str) -> _FromEnv:
        text = super().__new__(cls, value)
        text.env_var = env_var
        return text


def _env_default(name: str, default: Any) -> Any:
    """The value of ``OBJSTORE_BACKEND_<NAME>`` (or, for the store's own settings, Airflow's
    ``AIRFLOW__OBJSTORE_BACKEND__<NAME>``) if set, else ``default``."""
    for env_var in (ENV_PREFIX + name, AIRFLOW_ENV_PREFIX + name)[: 2 if name.lower() in KEYS else 1]:
        if os.environ.get(env_var):
            return _FromEnv(os.environ[env_var], env_var)
    return default


def _option_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=``: ``parse``'s ValueError becomes the one-line usage error, naming
    the env var when the text came from one (and never repeating text that may hold secrets)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            source = f" (from {text.env_var})" if isinstance(text, _FromEnv) else ""
            raise argparse.ArgumentTypeError(f"{exc}{source}") from exc

    convert.__name__ = parse.__name__
    return convert


def _whole_number_at_least_1(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"must be a whole number >= 1, got {text!r}")
    return number


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"must be a number of seconds >= 0 (e.g. 3600), got {text!r}")
    return seconds


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"must be true or false (1/0, yes/no, on/off), got {text!r}")
    return value in ("1", "true", "yes", "on")


def _one_of(*choices: str) -> Callable[[str], str]:
    def choice(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return choice


def _store_path(text: str) -> str:
    """The base URL, checked as the backend checks it (scheme, connection id, no credentials)."""
    return StoreSettings(path=text).path if text else ""


def _database_url(text: str) -> str:
    """A SQLAlchemy URL whose dialect and driver are installed (checked without connecting)."""
    create_db_engine(text)
    return text


def _flag(parser: argparse.ArgumentParser, name: str, *, env: str, help: str) -> None:
    """A ``--flag`` that takes no value; its default, from an env var, must be a boolean."""
    parser.add_argument(
        name, action=_StoreTrue, type=_option_type(_boolean), default=_env_default(env, False), help=help
    )


def _writers_stopped_flag(parser: argparse.ArgumentParser, command: str) -> None:
    _flag(
        parser,
        "--writers-stopped",
        env="WRITERS_STOPPED",
        help=f"every task and API server writing the store is stopped: lets {command} run on a filesystem "
        "without conditional deletes and create-only writes (sftp, ftp, hdfs, smb, webdav), where it "
        "refuses otherwise (see docs/reliability.md)",
    )


class _StoreTrue(argparse.Action):
    """``store_true`` with a ``type``, so a default read from an env var is checked too."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        setattr(namespace, self.dest, True)


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
        type=_option_type(_store_path),
        default=_env_default("PATH", ""),
        help="base URL of the store (default: $OBJSTORE_BACKEND_PATH, "
        "$AIRFLOW__OBJSTORE_BACKEND__PATH, else $AIRFLOW_HOME/state_store)",
    )
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        type=_option_type(parse_storage_options),
        default=_env_default("STORAGE_OPTIONS", {}),
        help="fsspec storage options as a JSON object, e.g. an endpoint_url (default: "
        "$OBJSTORE_BACKEND_STORAGE_OPTIONS, $AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS)",
    )
    parser.set_defaults(func=func)
    return parser


def _sweep_options(parser: argparse.ArgumentParser, *, json_help: str, concurrency_help: str) -> None:
    """The flags the GC and the audit share, each defaulting to its OBJSTORE_BACKEND_* env var."""
    _flag(parser, "--json", env="JSON", help=json_help)
    parser.add_argument(
        "--concurrency",
        type=_option_type(_whole_number_at_least_1),
        default=_env_default("CONCURRENCY", 32),
        help=f"{concurrency_help} (default 32)",
    )


_SIMPLE_EXIT = "exit status: 0 success, 1 an operation failed, 2 bad usage or settings"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        description="Print the JSON value stored at PATH (as `ls` shows it), exactly as stored, and, with -m,\n"
        "its metadata first.",
        examples=["get -m task/my_dag/manual__2026-01-01/extract/-1/job_id"],
        exit_status="exit status: 0 success, 1 no such object, a damaged one, or a failed read; 2 bad usage",
    )
    get.add_argument("object_path", metavar="PATH", help="the key's path relative to the base")
    get.add_argument("-m", "--metadata", action="store_true", help="also print mode and expiry first")

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
        exit_status="exit status: 0 all went well, 1 some read, delete or reconciliation failed (see errors), "
        "2 bad usage, or a filesystem without conditional deletes (see --writers-stopped)",
    )
    _sweep_options(
        gc, json_help="print the summary as one JSON object on the last line", concurrency_help="requests in flight"
    )
    _flag(gc, "--dry-run", env="DRY_RUN", help="delete nothing")
    _writers_stopped_flag(gc, "gc")
    gc.add_argument(
        "--shard",
        type=_option_type(parse_shard),
        default=_env_default("SHARD", (0, 1)),
        metavar="I/N",
        help="sweep only shard I of N, a slice of the key space (a Kubernetes Indexed Job runs one per pod)",
    )
    gc.add_argument(
        "--list-concurrency",
        type=_option_type(_whole_number_at_least_1),
        default=_env_default("LIST_CONCURRENCY", 4),
        metavar="N",
        help="listers on disjoint key ranges at once in this shard (default 4)",
    )
    _flag(
        gc, "--full", env="FULL", help="read every object's metadata again instead of trusting the last sweep's index"
    )
    gc.add_argument(
        "--index",
        metavar="URL",
        type=_option_type(_store_path),
        default=_env_default("INDEX", None),
        help="where the GC keeps its index and key-range plan (default: ~gc-index/ under the base path)",
    )
    gc.add_argument(
        "--airflow-db",
        metavar="URL",
        type=_option_type(AirflowDBReconciler),
        dest="reconciler",
        default=_env_default("AIRFLOW_DB", None),
        help="read-only SQLAlchemy URL of Airflow's metadata DB, to reclaim orphaned offload objects",
    )
    gc.add_argument(
        "--offload-grace",
        type=_option_type(_seconds),
        default=_env_default("OFFLOAD_GRACE", 3600.0),
        metavar="SECONDS",
        help="never reclaim an offload object younger than this (default 3600)",
    )
    gc.add_argument(
        "--delete-mode",
        type=_option_type(_one_of("batch", "single")),
        metavar="{batch,single}",
        default=_env_default("DELETE_MODE", "batch"),
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
        type=_option_type(_one_of(*LEVELS)),
        metavar="{" + ",".join(LEVELS) + "}",
        default=_env_default("FAIL_ON", "error"),
        help="exit 1 when a finding is at this level or above (default error)",
    )

    importer = _subcommand(
        commands,
        "import",
        cmd_import,
        summary="copy a deployment's live state from Airflow's metadata DB into the store",
        description=(
            "Before switching to primary mode ([state_store] backend): copy every live row of\n"
            "task_state_store and asset_state_store into the store, each with its exact expiry. Plain\n"
            "values, this package's offload references and common.io's references are resolved; the\n"
            "value is written, never the reference. Reads the DB only. Run it again at any time: it\n"
            "writes only what changed, and never overwrites a newer object (see README)."
        ),
        examples=[
            "import --airflow-db postgresql://reader@db/airflow --path s3://bucket/airflow/state/ --dry-run",
            "import --airflow-db sqlite:////opt/airflow/airflow.db --commonio-path s3://bucket/task-state/",
        ],
        exit_status="exit status: 0 every live row is in the store, 1 some row could not be imported "
        "(each named on stderr), 2 bad usage, or a filesystem without create-only writes (see --writers-stopped)",
    )
    _sweep_options(
        importer,
        json_help="print the summary as one JSON object on the last line",
        concurrency_help="objects in flight",
    )
    importer.add_argument(
        "--airflow-db",
        metavar="URL",
        type=_option_type(_database_url),
        default=_env_default("AIRFLOW_DB", None),
        required=_env_default("AIRFLOW_DB", None) is None,
        help="SQLAlchemy URL of Airflow's metadata DB, read only (default: $OBJSTORE_BACKEND_AIRFLOW_DB)",
    )
    importer.add_argument(
        "--compression",
        type=_option_type(_one_of(*COMPRESSIONS)),
        default=_env_default("COMPRESSION", "none"),
        help="compress the values written, as the backend's [objstore_backend] compression (default none)",
    )
    _flag(importer, "--dry-run", env="DRY_RUN", help="write nothing; count what would be written")
    _writers_stopped_flag(importer, "import")
    importer.add_argument(
        "--commonio-path",
        metavar="URL",
        help="the common.io backend's base path (default: [common.io] state_store_objectstorage_path "
        "from the env var or airflow.cfg)",
    )
    importer.add_argument(
        "--commonio-storage-options",
        metavar="JSON",
        type=_option_type(parse_storage_options),
        default={},
        help="fsspec storage options to read common.io's objects",
    )

    exporter = _subcommand(
        commands,
        "export",
        cmd_export,
        summary="write the store's live keys back into Airflow's metadata DB (needs Airflow)",
        description=(
            "To leave primary mode: write every live primary-mode key back into Airflow's metadata DB\n"
            "through Airflow's own MetastoreBackend, with its exact expiry. Run it where Airflow and its\n"
            "DB settings are. Reads the store only; rows newer than the object are kept."
        ),
        examples=["export --path s3://bucket/airflow/state/ --dry-run"],
        exit_status="exit status: 0 every live key is in the DB, 1 some key could not go back "
        "(each named on stderr), 2 bad usage",
    )
    _flag(exporter, "--json", env="JSON", help="print the summary as one JSON object on the last line")
    _flag(exporter, "--dry-run", env="DRY_RUN", help="write nothing; count what would be written")
    return parser


def open_store(args: argparse.Namespace) -> ObjectStore:
    return ObjectStore(*StoreSettings(path=args.path, storage_options=args.storage_options).resolve())


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
    key = original_key(location, metadata.key)  # None: hashed in the path and not recorded
    return {**entry, "key": key, "mode": metadata.mode, "expires_at": expires, "expired": metadata.is_expired()}


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
            hashed = "key" in row and is_hashed(row["path"].rsplit("/", 1)[-1])
            key = (f"  (key {row['key']!r})" if row["key"] else "  (key not recorded)") if hashed else ""
            print(f"{row['mode']:<8} {row['bytes']:>10}  {expiry:<32}{flag} {row['path']}{key}")
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
    print(json_text(found.body, store.display_path(args.object_path)))  # as stored: every number as written
    return EXIT_OK


def _gc_options(args: argparse.Namespace) -> GCOptions:
    return GCOptions(
        dry_run=args.dry_run,
        concurrency=args.concurrency,
        shard=args.shard,
        list_concurrency=args.list_concurrency,
        full=args.full,
        index_url=args.index or None,
        offload_grace=timedelta(seconds=args.offload_grace),
        batched_deletes=args.delete_mode == "batch",
        writers_stopped=args.writers_stopped,
        reconciler=args.reconciler,
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
    report_gc(report)
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
    report_audit(report)
    if args.json:
        print(orjson.dumps(report.as_dict()).decode())
    else:
        _print_audit(report)
    return EXIT_FAILED if report.fails(args.fail_on) or report.inventory.errors else EXIT_OK


def _print_summary(summary: dict[str, Any]) -> None:
    rows = [(name, value) for name, value in summary.items() if not isinstance(value, list)]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def _with_progress(args: argparse.Namespace, desc: str, total: int | None, run: Any) -> Any:
    """``run(progress, on_problem)`` under a progress bar on a terminal; problems go to stderr."""
    if sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        with tqdm(desc=desc, total=total, unit=" keys", file=sys.stderr) as bar:
            return run(bar.update, lambda note: bar.write(f"objstore-backend: {note}", file=sys.stderr))
    return run(None, lambda note: print(f"objstore-backend: {note}", file=sys.stderr))


def cmd_import(args: argparse.Namespace) -> int:
    from objstore_backend.commonio import CommonIOSource, commonio_path_from_airflow
    from objstore_backend.migrate import ImportOptions, run_import
    from objstore_backend.state_rows import AirflowStateDB

    store = open_store(args)
    commonio_path = args.commonio_path or commonio_path_from_airflow()
    options = ImportOptions(
        dry_run=args.dry_run,
        concurrency=args.concurrency,
        compression=args.compression,
        commonio=CommonIOSource(commonio_path, args.commonio_storage_options) if commonio_path else None,
        writers_stopped=args.writers_stopped,
    )
    db = AirflowStateDB(args.airflow_db)
    try:
        report = _with_progress(
            args,
            f"import into {store.url}",
            db.count(),
            lambda progress, on_problem: run_import(store, db, options, progress=progress, on_problem=on_problem),
        )
    finally:
        db.close()
    summary = report.as_dict()
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        _print_summary(summary)
    return EXIT_FAILED if report.failed else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from objstore_backend.export import run_export
    except ImportError as exc:
        raise ValueError(f"export writes through Airflow's own backend and needs Airflow installed: {exc}") from exc
    store = open_store(args)
    report = _with_progress(
        args,
        f"export from {store.url}",
        None,
        lambda progress, on_problem: run_export(store, dry_run=args.dry_run, progress=progress, on_problem=on_problem),
    )
    summary = report.as_dict()
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        _print_summary(summary)
    return EXIT_FAILED if report.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
        return status
    except OSError as exc:  # first: a damaged object (CorruptObjectError) is also a ValueError
        print(f"objstore-backend: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # bad settings
        print(f"objstore-backend: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        shutdown()  # the metrics' last export, before a CronJob's pod goes away


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
