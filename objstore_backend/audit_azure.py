"""The audit's Azure checks: what the data plane shows of the account and container, and the
account's lifecycle management policy where the caller may read it.

The data plane (the Blob service, any credential the store uses) shows blob soft delete (blob
service properties) and the container's public access, immutability policy, legal hold and
version-level immutability. The lifecycle policy lives in the management plane: it is read with
``azure-mgmt-storage`` (``pip install 'objstore-backend[azure-audit]'``), a token credential
(managed or workload identity, a service principal; an account key or SAS cannot read it) and
the subscription in ``AZURE_SUBSCRIPTION_ID``. Whatever cannot be read is a ``*_CANNOT_READ_*``
finding saying what is missing, never a guess.

Azure lifecycle rules delete by days since modification, creation or last access only: there is
no rule that honours a per-blob expiry, so the GC stays the mechanism, and a rule that deletes
(or archives) base blobs under the state prefix is an error: it reaches never-expiring state.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from objstore_backend.audit import Finding, _covers
from objstore_backend.errors import BucketNotFoundError
from objstore_backend.store import ObjectStore
from objstore_backend.transports.azure import sdk_call

__all__ = ["azure_findings", "check_azure_container", "check_azure_lifecycle"]

_DELETE_CONDITIONS = (
    "daysAfterModificationGreaterThan",
    "daysAfterCreationGreaterThan",
    "daysAfterLastAccessTimeGreaterThan",
)


def _cannot_read(what: str, exc: BaseException | str, fix: str) -> Finding:
    code = "AZURE_CANNOT_READ_" + what.upper().replace(" ", "_")
    return Finding(code, "warning", f"cannot read the {what} ({exc}): {fix}, or this check is skipped")


def check_azure_container(service: dict[str, Any] | Exception, container: dict[str, Any] | Exception) -> list[Finding]:
    """Findings from the blob service properties and the container's properties (SDK attribute names)."""
    findings = []
    if isinstance(service, Exception):
        findings.append(
            _cannot_read("blob service properties", service, "grant the audit identity Storage Blob Data Reader")
        )
    else:
        retention = service.get("delete_retention_policy") or {}
        if retention.get("enabled"):
            findings.append(
                Finding(
                    "AZURE_SOFT_DELETE",
                    "warning",
                    f"blob soft delete keeps every deleted blob, and a snapshot of every overwritten one, for "
                    f"{retention.get('days')} days (billed, and applied to each rewrite of a progress key); turn it "
                    "off for the state store's account or accept the cost",
                )
            )
    if isinstance(container, Exception):
        findings.append(
            _cannot_read("container properties", container, "grant the audit identity Storage Blob Data Reader")
        )
        return findings
    if container.get("public_access"):
        findings.append(
            Finding(
                "AZURE_PUBLIC_ACCESS",
                "error",
                f"the container allows anonymous read access ({container['public_access']}): anyone can read task "
                "state; set its access level to private and disallow blob public access on the account",
            )
        )
    if container.get("has_immutability_policy"):
        findings.append(
            Finding(
                "AZURE_IMMUTABILITY_POLICY",
                "error",
                "the container has an immutability policy: the GC, clears and overwrites of state fail while it "
                "holds; use a container without one",
            )
        )
    if container.get("has_legal_hold"):
        findings.append(
            Finding(
                "AZURE_LEGAL_HOLD",
                "error",
                "the container has a legal hold: no state can be deleted or overwritten until it is cleared",
            )
        )
    if container.get("immutable_storage_with_versioning_enabled"):
        findings.append(
            Finding(
                "AZURE_VERSION_IMMUTABILITY",
                "warning",
                "version-level immutability is enabled: a retention policy set on blobs would make deletes of state "
                "fail; use a container without it for the state store",
            )
        )
    return findings


def _rule_reaches(rule: dict[str, Any], container: str, base_prefix: str) -> bool:
    """Does a lifecycle rule's filter reach block blobs under ``container/base_prefix``?"""
    filters = rule.get("definition", {}).get("filters", {})
    if filters.get("blobIndexMatch"):
        return False  # state blobs carry no index tags
    if "blockBlob" not in filters.get("blobTypes", ["blockBlob"]):
        return False
    prefixes = filters.get("prefixMatch") or [""]
    for prefix in prefixes:
        rule_container, _, blob_prefix = prefix.partition("/")
        if not prefix or (rule_container == container and _covers(blob_prefix, base_prefix)):
            return True
        if "/" not in prefix and container.startswith(rule_container):
            return True  # a bare prefix matches container names starting with it
    return False


def check_azure_lifecycle(policy: dict[str, Any] | None, container: str, base_prefix: str) -> list[Finding]:
    """Findings from an account's management policy (the REST shape: ``{"policy": {"rules": [...]}}``)."""
    findings = []
    for rule in (policy or {}).get("policy", {}).get("rules", []):
        if not rule.get("enabled", True) or not _rule_reaches(rule, container, base_prefix):
            continue
        base_blob = rule.get("definition", {}).get("actions", {}).get("baseBlob", {})
        if any(condition in base_blob.get("delete", {}) for condition in _DELETE_CONDITIONS):
            findings.append(
                Finding(
                    "AZURE_LIFECYCLE_DELETES_STATE",
                    "error",
                    f"lifecycle rule {rule.get('name', '?')!r} deletes base blobs under the state prefix by age: it "
                    "will delete never-expiring and asset state (Azure has no per-blob expiry rule; the GC handles "
                    "expiry); scope it away from the prefix, or limit it to snapshots and versions",
                )
            )
        if "tierToArchive" in base_blob:
            findings.append(
                Finding(
                    "AZURE_LIFECYCLE_ARCHIVES_STATE",
                    "error",
                    f"lifecycle rule {rule.get('name', '?')!r} moves state blobs to the archive tier: reads of them "
                    "fail until rehydrated; scope it away from the state prefix",
                )
            )
    return findings


def _read_lifecycle(fs: Any, account: str) -> dict[str, Any] | None:
    """The account's management policy (REST shape), ``None`` when it has none. Raises what stops it."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.storage import StorageManagementClient

    subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
    credential = getattr(fs, "sync_credential", None)
    if not subscription:
        raise LookupError("AZURE_SUBSCRIPTION_ID is not set")
    if credential is None:
        raise LookupError("the store's credential is an account key, SAS or connection string, not a token")
    client = StorageManagementClient(credential, subscription)
    found = [a for a in client.storage_accounts.list() if a.name == account]
    if not found:
        raise LookupError(f"no storage account {account!r} visible in subscription {subscription}")
    resource_group = str(found[0].id).split("/")[4]
    try:
        policy = client.management_policies.get(resource_group, account, "default")
    except ResourceNotFoundError:
        return None
    document: dict[str, Any] = policy.as_dict()  # the REST shape
    properties: dict[str, Any] = document.get("properties", document)
    return properties


async def _setting(store: ObjectStore, what: str, container: str, read: Callable[[], Any]) -> Any:
    """One data-plane read under the store's retry policy; the error it ends with, not raised."""
    try:
        return await store.transport.attempt(f"reading the {what} of", container, lambda: sdk_call(container, read()))
    except BucketNotFoundError:
        raise
    except OSError as exc:
        return exc


async def azure_findings(store: ObjectStore, fs: Any, base_prefix: str) -> list[Finding]:
    container = store.root.split("/", 1)[0]
    service = fs.service_client
    client = service.get_container_client(container)
    service_properties = await _setting(store, "blob service properties", container, service.get_service_properties)
    properties = await _setting(store, "properties", container, client.get_container_properties)
    service_dict = (
        service_properties
        if isinstance(service_properties, Exception)
        else {"delete_retention_policy": vars(service_properties["delete_retention_policy"])}
    )
    container_dict = properties if isinstance(properties, Exception) else dict(properties)
    findings = check_azure_container(service_dict, container_dict)
    try:
        policy = await asyncio.to_thread(_read_lifecycle, fs, service.account_name)
    except ImportError:
        reason: BaseException | str = "azure-mgmt-storage is not installed"
        findings.append(_cannot_read("lifecycle policy", reason, "pip install 'objstore-backend[azure-audit]'"))
    except Exception as exc:  # refused, missing subscription or token: a finding, never a crash
        findings.append(
            _cannot_read(
                "lifecycle policy",
                exc,
                "set AZURE_SUBSCRIPTION_ID and give the audit a token credential with Microsoft.Storage/"
                "storageAccounts/managementPolicies/read (e.g. the Reader role on the account)",
            )
        )
    else:
        findings += check_azure_lifecycle(policy, container, base_prefix)
    return findings
