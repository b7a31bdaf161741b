"""The audit: what the state store holds, and what the bucket's own rules will do to it.

Read-only. The inventory streams the listing like the GC (memory stays flat); the bucket
checks read the bucket's configuration and turn each risk into a :class:`Finding` with a stable
code, a level and a one-line fix. A setting the caller may not read becomes a finding too,
never a crash.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from objstore_backend.errors import BucketNotFoundError
from objstore_backend.scan import scan_pages
from objstore_backend.store import ObjectStore
from objstore_backend.transports import AZURE_PROTOCOLS, GCSTransport, LocalTransport, S3Transport

__all__ = ["LEVELS", "AuditReport", "Finding", "Inventory", "check_gcs_bucket", "run_audit"]

logger = logging.getLogger(__name__)

LEVELS = ("info", "warning", "error")
_TOP = 10


@dataclass(frozen=True)
class Finding:
    code: str
    level: str  # one of LEVELS
    message: str  # what is wrong and how to fix it, one line


@dataclass
class Inventory:
    """What the store holds, counted in one streamed pass."""

    keys: int = 0
    bytes: int = 0
    by_mode: dict[str, dict[str, int]] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    top_dags: list[dict[str, Any]] = field(default_factory=list)
    expired_backlog: dict[str, Any] = field(default_factory=lambda: {"keys": 0, "bytes": 0, "oldest_expiry": None})
    never_expire: int = 0
    offload: int = 0
    largest: list[dict[str, Any]] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # the first few paths
    foreign_count: int = 0
    unreadable: list[str] = field(default_factory=list)
    unreadable_count: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    inventory: Inventory
    findings: list[Finding]

    def as_dict(self) -> dict[str, Any]:
        return {"inventory": asdict(self.inventory), "findings": [asdict(f) for f in self.findings]}

    def fails(self, level: str) -> bool:
        """True if any finding is at ``level`` or above (for ``--fail-on``)."""
        return any(LEVELS.index(f.level) >= LEVELS.index(level) for f in self.findings)


def _add(table: dict[str, dict[str, int]], name: str, size: int) -> None:
    row = table.setdefault(name, {"keys": 0, "bytes": 0})
    row["keys"] += 1
    row["bytes"] += size


async def _take_inventory(store: ObjectStore, fs: Any, concurrency: int, top_dags: int | None) -> Inventory:
    inventory = Inventory()
    dags: dict[str, dict[str, int]] = {}
    largest: list[tuple[int, str]] = []
    now = datetime.now(timezone.utc)
    oldest: datetime | None = None
    async for page in scan_pages(store, fs, concurrency=concurrency):
        for found in page:
            path, size = found.entry.path, found.entry.size
            if found.location is None:
                inventory.foreign_count += 1
                if len(inventory.foreign) < _TOP:
                    inventory.foreign.append(path)
                continue
            if found.unreadable or found.error:
                inventory.unreadable_count += 1
                if len(inventory.unreadable) < _TOP:
                    inventory.unreadable.append(path)
                if found.error and len(inventory.errors) < _TOP:
                    inventory.errors.append(found.error)
                continue
            metadata = found.metadata
            if metadata is None:
                continue
            inventory.keys += 1
            inventory.bytes += size
            mode = "primary" if metadata.mode == "primary" or metadata.adopted else "offload"
            _add(inventory.by_mode, mode, size)
            _add(inventory.by_kind, found.location.kind.value, size)
            if found.location.dag_id is not None:
                _add(dags, found.location.dag_id, size)
            heapq.heappush(largest, (size, path))
            if len(largest) > _TOP:
                heapq.heappop(largest)
            if mode == "offload":
                inventory.offload += 1
            elif metadata.expires_at is None:
                inventory.never_expire += 1
            elif metadata.is_expired(now):
                inventory.expired_backlog["keys"] += 1
                inventory.expired_backlog["bytes"] += size
                oldest = metadata.expires_at if oldest is None else min(oldest, metadata.expires_at)
    inventory.expired_backlog["oldest_expiry"] = oldest.isoformat() if oldest else None
    top = sorted(dags.items(), key=lambda item: (-item[1]["bytes"], item[0]))[:top_dags]
    inventory.top_dags = [{"dag_id": dag_id, **row} for dag_id, row in top]
    inventory.largest = [{"path": path, "bytes": size} for size, path in sorted(largest, reverse=True)]
    return inventory


# -- S3 ----------------------------------------------------------------------------------


def _covers(rule_prefix: str, base_prefix: str) -> bool:
    """Does a rule on ``rule_prefix`` reach objects under ``base_prefix``?"""
    return base_prefix.startswith(rule_prefix) or rule_prefix.startswith(base_prefix)


def _s3_rule_prefix(rule: dict[str, Any]) -> str | None:
    """The prefix a lifecycle rule applies to, or None if it only applies to tagged objects."""
    rule_filter = rule.get("Filter", {})
    if "Tag" in rule_filter or rule_filter.get("And", {}).get("Tags"):
        return None  # state objects carry no tags
    return str(rule_filter.get("Prefix", rule_filter.get("And", {}).get("Prefix", rule.get("Prefix", ""))))


# Storage classes a lifecycle rule may move objects to: minimum billed days, and whether a GET still
# answers (Glacier Flexible Retrieval and Deep Archive want a restore first: 403 InvalidObjectState).
_S3_CLASSES: dict[str, tuple[int, bool]] = {
    "STANDARD_IA": (30, True),
    "ONEZONE_IA": (30, True),
    "GLACIER_IR": (90, True),
    "INTELLIGENT_TIERING": (0, True),
    "GLACIER": (90, False),
    "DEEP_ARCHIVE": (180, False),
}


def _s3_transition_findings(rule: dict[str, Any]) -> list[Finding]:
    """What a covering rule's transitions do to state: archived current objects cannot be read."""
    findings = []
    name = rule.get("ID", "?")
    for transition in rule.get("Transitions", []):
        storage_class = transition.get("StorageClass", "?")
        when = f"after {transition['Days']} days" if "Days" in transition else f"on {transition.get('Date')}"
        minimum_days, readable = _S3_CLASSES.get(storage_class, (0, True))
        if not readable:
            findings.append(
                Finding(
                    "S3_LIFECYCLE_ARCHIVES_STATE",
                    "error",
                    f"lifecycle rule {name!r} moves state objects to {storage_class} {when}: reads of them fail "
                    "(403 InvalidObjectState) until restored, so tasks lose their state; scope it away from the "
                    "state prefix",
                )
            )
        elif storage_class == "INTELLIGENT_TIERING":
            findings.append(
                Finding(
                    "S3_LIFECYCLE_INTELLIGENT_TIERING",
                    "info",
                    f"lifecycle rule {name!r} moves state objects to INTELLIGENT_TIERING {when}: a monitoring fee "
                    "per object of 128 KB or more, no retrieval fee; make sure no Intelligent-Tiering configuration "
                    "opts the state prefix into its Archive Access tiers (archived state cannot be read)",
                )
            )
        else:
            billed = f"at least {minimum_days} days and 128 KB" if minimum_days else "that class's minimum duration"
            findings.append(
                Finding(
                    "S3_LIFECYCLE_TIERS_STATE",
                    "warning",
                    f"lifecycle rule {name!r} moves state objects to {storage_class} {when}: each is billed for "
                    f"{billed}, every read pays a retrieval fee per GB, "
                    "and a key rewritten or deleted sooner pays the rest; keep the state prefix in STANDARD",
                )
            )
    for transition in rule.get("NoncurrentVersionTransitions", []):
        storage_class = transition.get("StorageClass", "?")
        minimum_days, readable = _S3_CLASSES.get(storage_class, (0, True))
        if minimum_days or not readable:
            findings.append(
                Finding(
                    "S3_LIFECYCLE_TIERS_NONCURRENT_STATE",
                    "warning",
                    f"lifecycle rule {name!r} moves noncurrent versions of state to {storage_class}: every rewrite "
                    f"of a key leaves a version billed for at least {minimum_days} days"
                    + ("" if readable else ", and an old value needs a restore before it can be read")
                    + "; expire noncurrent state versions instead (NoncurrentVersionExpiration)",
                )
            )
    return findings


def check_s3_bucket(config: dict[str, Any], base_prefix: str) -> list[Finding]:
    """Findings for an S3 bucket from its configuration documents (boto3 response shapes).

    ``config`` maps ``lifecycle``, ``versioning``, ``encryption``, ``public_access_block``,
    ``policy`` and ``object_lock`` to the response, to ``None`` when unset, or to an exception
    when it could not be read.
    """
    findings = []
    for name, value in config.items():
        if isinstance(value, Exception):
            findings.append(
                Finding(
                    f"S3_CANNOT_READ_{name.upper()}",
                    "warning",
                    f"cannot read the bucket's {name.replace('_', ' ')} ({value}): grant the audit role read access to "
                    "it, or this check is skipped",
                )
            )
    lifecycle = config.get("lifecycle")
    rules = [] if not isinstance(lifecycle, dict) else lifecycle.get("Rules", [])
    rules = [r for r in rules if r.get("Status") == "Enabled"]
    covering = [r for r in rules if (p := _s3_rule_prefix(r)) is not None and _covers(p, base_prefix)]
    for rule in covering:
        findings += _s3_transition_findings(rule)
        expiration = rule.get("Expiration", {})
        if "Days" in expiration or "Date" in expiration:
            findings.append(
                Finding(
                    "S3_LIFECYCLE_EXPIRES_STATE",
                    "error",
                    f"lifecycle rule {rule.get('ID', '?')!r} expires current objects under the state prefix: it will "
                    "delete never-expiring and asset state; scope it away from the prefix (the GC handles expiry)",
                )
            )
    if not isinstance(lifecycle, Exception):
        if not any("AbortIncompleteMultipartUpload" in r for r in covering):
            findings.append(
                Finding(
                    "S3_NO_ABORT_MULTIPART",
                    "warning",
                    "no lifecycle rule aborts incomplete multipart uploads under the state prefix: failed large "
                    "writes stay billed; add AbortIncompleteMultipartUpload (e.g. 1 day)",
                )
            )
        versioning = config.get("versioning")
        if isinstance(versioning, dict) and versioning.get("Status") == "Enabled":
            if not any("NoncurrentVersionExpiration" in r for r in covering):
                findings.append(
                    Finding(
                        "S3_VERSIONING_NO_NONCURRENT_EXPIRY",
                        "warning",
                        "versioning is on but no rule expires noncurrent versions under the state prefix: every "
                        "deleted or overwritten value is kept and billed forever; add NoncurrentVersionExpiration",
                    )
                )
    if config.get("encryption") is None:
        findings.append(
            Finding(
                "S3_NO_DEFAULT_ENCRYPTION",
                "warning",
                "the bucket has no default encryption: set SSE-S3 or SSE-KMS as its default",
            )
        )
    block = config.get("public_access_block")
    if not isinstance(block, Exception):
        settings = (block or {}).get("PublicAccessBlockConfiguration", {})
        flags = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
        if not all(settings.get(flag) for flag in flags):
            findings.append(
                Finding(
                    "S3_PUBLIC_ACCESS_NOT_BLOCKED",
                    "warning",
                    "public access is not fully blocked on the bucket: turn on all four Block Public Access settings",
                )
            )
    findings += _s3_delete_blockers(config.get("policy"), config.get("object_lock"), base_prefix)
    return findings


def _s3_delete_blockers(policy: Any, object_lock: Any, base_prefix: str) -> list[Finding]:
    findings = []
    if isinstance(policy, dict):
        document = json.loads(policy.get("Policy", "{}"))
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            actions = statement.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            resources = statement.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            deletes = any(a in ("s3:*", "s3:DeleteObject", "s3:Delete*", "*") for a in actions)
            reaches = any(
                _covers(r.split(":::", 1)[-1].split("/", 1)[-1].rstrip("*"), base_prefix) for r in resources if "/" in r
            )
            if statement.get("Effect") == "Deny" and deletes and reaches:
                findings.append(
                    Finding(
                        "S3_POLICY_DENIES_DELETE",
                        "error",
                        f"bucket policy statement {statement.get('Sid', '?')!r} denies deletes under the state prefix"
                        f"{' (with conditions)' if 'Condition' in statement else ''}: the GC and clears will fail; "
                        "exempt the Airflow and GC roles",
                    )
                )
    if isinstance(object_lock, dict):
        lock = object_lock.get("ObjectLockConfiguration", {})
        if lock.get("ObjectLockEnabled") == "Enabled":
            retention = lock.get("Rule", {}).get("DefaultRetention")
            findings.append(
                Finding(
                    "S3_OBJECT_LOCK_BLOCKS_DELETE",
                    "error" if retention else "warning",
                    "object lock is enabled"
                    + (
                        f" with default retention {retention}: deletes of state fail until it passes"
                        if retention
                        else ": a retention set on objects would make deletes of state fail"
                    )
                    + "; use a bucket without object lock for the state store",
                )
            )
    return findings


async def _s3_config(store: ObjectStore, fs: Any) -> dict[str, Any]:
    bucket = store.root.split("/", 1)[0]
    calls = {
        "lifecycle": "get_bucket_lifecycle_configuration",
        "versioning": "get_bucket_versioning",
        "encryption": "get_bucket_encryption",
        "public_access_block": "get_public_access_block",
        "policy": "get_bucket_policy",
        "object_lock": "get_object_lock_configuration",
    }
    transport = store.transport
    assert isinstance(transport, S3Transport)
    config: dict[str, Any] = {}
    for name, method in calls.items():
        try:
            config[name] = await transport.bucket_setting(fs, bucket, method)
        except BucketNotFoundError:
            raise
        except OSError as exc:  # refused, or still failing after the retries: a finding, not a crash
            config[name] = exc
    return config


# -- GCS ---------------------------------------------------------------------------------


# GCS classes with a minimum storage duration (days) and a retrieval fee (USD per GB read). Reads
# answer at once in every class; Autoclass charges neither, so its buckets are not reported.
_GCS_CLASSES = {"NEARLINE": (30, "0.01"), "COLDLINE": (90, "0.02"), "ARCHIVE": (365, "0.05")}


def _gcs_class_findings(code: str, storage_class: str, what: str) -> list[Finding]:
    if storage_class not in _GCS_CLASSES:
        return []
    minimum_days, retrieval = _GCS_CLASSES[storage_class]
    return [
        Finding(
            code,
            "warning",
            f"{what} {storage_class}: each object is billed for at least {minimum_days} days (a key rewritten or "
            f"deleted sooner pays the rest) and every read costs ${retrieval}/GB retrieval; keep the state prefix in "
            "STANDARD",
        )
    ]


def check_gcs_bucket(bucket: dict[str, Any], base_prefix: str) -> list[Finding]:
    """Findings for a GCS bucket from its JSON API resource (``GET b/{bucket}``)."""
    findings = []
    rules = bucket.get("lifecycle", {}).get("rule", [])
    custom_time_rule = False
    autoclass = bool(bucket.get("autoclass", {}).get("enabled"))
    for rule in rules:
        condition = rule.get("condition", {})
        prefixes = condition.get("matchesPrefix") or [""]
        if not any(_covers(p, base_prefix) for p in prefixes):
            continue
        action = rule.get("action", {})
        if action.get("type") == "SetStorageClass" and not autoclass:
            objects = "noncurrent versions of state" if condition.get("isLive") is False else "state objects"
            what = f"lifecycle rule {condition} moves {objects} to"
            findings += _gcs_class_findings(
                "GCS_LIFECYCLE_CHANGES_STORAGE_CLASS", str(action.get("storageClass")), what
            )
        if action.get("type") != "Delete" or condition.get("isLive") is False:
            continue
        if condition.get("daysSinceCustomTime") == 0 and len(condition) <= 2:
            custom_time_rule = True
        elif "age" in condition or "createdBefore" in condition or "daysSinceCustomTime" in condition:
            findings.append(
                Finding(
                    "GCS_LIFECYCLE_DELETES_LIVE_STATE",
                    "error",
                    f"lifecycle Delete rule {condition} reaches live objects under the state prefix: it will delete "
                    "never-expiring and asset state; use only daysSinceCustomTime=0 on the prefix",
                )
            )
    if not custom_time_rule:
        findings.append(
            Finding(
                "GCS_NO_CUSTOM_TIME_RULE",
                "info",
                "no lifecycle rule {action: Delete, condition: {daysSinceCustomTime: 0, matchesPrefix: [prefix]}}: "
                "the bucket could delete expired keys by itself (the GC stays the guarantee)",
            )
        )
    if not autoclass:
        findings += _gcs_class_findings(
            "GCS_DEFAULT_STORAGE_CLASS",
            str(bucket.get("storageClass")),
            "the bucket's default storage class puts new state in",
        )
    if bucket.get("versioning", {}).get("enabled"):
        findings.append(
            Finding(
                "GCS_VERSIONING",
                "warning",
                "object versioning is on: every overwritten or deleted value is kept and billed; turn it off for the "
                "state store, or add a Delete rule for noncurrent versions",
            )
        )
    soft_delete = int(bucket.get("softDeletePolicy", {}).get("retentionDurationSeconds", 0) or 0)
    if soft_delete > 0:
        findings.append(
            Finding(
                "GCS_SOFT_DELETE",
                "warning",
                f"soft delete keeps every deleted and overwritten value for {soft_delete // 86400} days (billed, and "
                "applied to each rewrite of a progress key); set its retention to 0 or accept the cost",
            )
        )
    retention = bucket.get("retentionPolicy")
    if retention:
        locked = " (locked: permanent)" if retention.get("isLocked") else ""
        findings.append(
            Finding(
                "GCS_RETENTION_POLICY",
                "error",
                f"a retention policy of {retention.get('retentionPeriod')} s{locked} blocks deletes: the GC, clears "
                "and overwrites of state fail; use a bucket without a retention policy",
            )
        )
    prevention = bucket.get("iamConfiguration", {}).get("publicAccessPrevention")
    if prevention != "enforced":
        findings.append(
            Finding(
                "GCS_PUBLIC_ACCESS_PREVENTION",
                "warning",
                f"public access prevention is {prevention or 'not set'}: set it to enforced",
            )
        )
    return findings


async def _gcs_findings(store: ObjectStore, fs: Any, base_prefix: str) -> list[Finding]:
    bucket = store.root.split("/", 1)[0]
    try:
        resource = await fs._call("GET", "b/{}", bucket, json_out=True)
    except OSError as exc:
        return [
            Finding(
                "GCS_CANNOT_READ_BUCKET",
                "warning",
                f"cannot read the bucket's metadata ({exc}): grant storage.buckets.get to the audit role",
            )
        ]
    return check_gcs_bucket(resource, base_prefix)


# -- local -------------------------------------------------------------------------------


def check_local_directory(root: str) -> list[Finding]:
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        return [Finding("LOCAL_CANNOT_READ", "warning", f"cannot stat {root}: {exc}")]
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [
            Finding(
                "LOCAL_READABLE_BY_OTHERS",
                "warning",
                f"{root} has mode {stat.filemode(mode)}: other users can read task state; chmod 700 it",
            )
        ]
    return []


async def _audit(store: ObjectStore, fs: Any, concurrency: int, top_dags: int | None) -> AuditReport:
    inventory = await _take_inventory(store, fs, concurrency, top_dags)
    base_prefix = store.root.split("/", 1)[1] + "/" if "/" in store.root else ""
    if isinstance(store.transport, S3Transport):
        findings = check_s3_bucket(await _s3_config(store, fs), base_prefix)
    elif isinstance(store.transport, GCSTransport):
        findings = await _gcs_findings(store, fs, base_prefix)
    elif isinstance(store.transport, LocalTransport):
        findings = check_local_directory(store.root)
    elif store.protocol in AZURE_PROTOCOLS:
        from objstore_backend.audit_azure import azure_findings  # which imports this module

        findings = await azure_findings(store, fs, base_prefix)
    else:
        findings = []
    if inventory.unreadable_count:
        findings.append(
            Finding(
                "UNREADABLE_OBJECTS",
                "warning",
                f"{inventory.unreadable_count} objects under the base look like state but have no readable metadata "
                "(written by hand or by another tool?): inspect them with `objstore-backend get`",
            )
        )
    if inventory.foreign_count:
        findings.append(
            Finding(
                "FOREIGN_OBJECTS",
                "info",
                f"{inventory.foreign_count} objects under the base path are not state objects; the GC never "
                "deletes them. Keep other data out of the state prefix",
            )
        )
    return AuditReport(inventory, sorted(findings, key=lambda f: (-LEVELS.index(f.level), f.code)))


def run_audit(store: ObjectStore, *, concurrency: int = 32, top_dags: int | None = _TOP) -> AuditReport:
    """Inventory and bucket checks, read-only. ``top_dags``: how many DAGs to list by bytes (None: all)."""
    if concurrency < 1:  # a semaphore of 0 would wait forever
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    report: AuditReport = store._run(lambda fs: _audit(store, fs, concurrency, top_dags))
    return report
