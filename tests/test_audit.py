"""The audit: the inventory on real stores, and each bucket finding from a real configuration.

S3 findings come from buckets configured through boto3 on moto's server. The GCS emulator does
not keep bucket lifecycle, soft delete or retention settings, so the GCS checks are fed bucket
resources in the JSON API's documented shape (``GET storage/v1/b/{bucket}``), written out in
tests/gcs_buckets/ from Google's reference for the bucket resource, not recorded from a bucket.
Azure's data-plane findings come from containers configured on Azurite; its lifecycle policies live
in the management plane, which no emulator serves, so those checks are fed policies built with
azure-mgmt-storage's own models.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend import cli
from objstore_backend.audit import check_gcs_bucket, run_audit
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import object_path
from tests.servers import CountingProxy

PAST = datetime.now(timezone.utc) - timedelta(hours=2)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
GCS_BUCKETS = Path(__file__).parent / "gcs_buckets"


def test_inventory_counts_what_the_store_holds(backend: ObjectStoreBackend) -> None:
    backend.set(TaskScope("etl", "r", "t", 0), "old", '"x"', expires_at=PAST)
    backend.set(TaskScope("etl", "r", "t", 1), "old", '"xy"', expires_at=PAST - timedelta(days=1))
    backend.set(TaskScope("etl", "r", "t", 0), "live", "1", expires_at=FUTURE)
    backend.set(TaskScope("report", "r", "t"), "forever", '"' + "z" * 5000 + '"')
    backend.set(AssetScope(asset_id=3), "w", "1")
    backend.serialize_asset_state_store_to_ref(value=[1, 2], key="w", scope=AssetScope(name="orders"))
    fs, path = backend.store.fs, backend.store.full_path("elsewhere/file.txt")
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, b"not state")

    inventory = run_audit(backend.store).inventory
    assert (inventory.keys, inventory.never_expire, inventory.offload) == (6, 2, 1)
    assert inventory.by_mode["primary"]["keys"] == 5 and inventory.by_mode["offload"]["keys"] == 1
    assert {k: v["keys"] for k, v in inventory.by_kind.items()} == {"task": 4, "asset/id": 1, "asset/name": 1}
    assert inventory.expired_backlog["keys"] == 2
    assert datetime.fromisoformat(inventory.expired_backlog["oldest_expiry"]) < PAST
    assert [row["dag_id"] for row in inventory.top_dags] == ["report", "etl"]  # by bytes
    assert inventory.largest[0]["path"] == object_path(TaskScope("report", "r", "t"), "forever")
    assert (inventory.foreign_count, inventory.foreign) == (1, ["elsewhere/file.txt"])


# -- S3 findings on real (moto) buckets --------------------------------------------------------


def _audit_codes(store: Any) -> dict[str, str]:
    return {f.code: f.level for f in run_audit(store).findings}


@pytest.fixture
def audit_s3(s3_bucket: str, s3_options: dict[str, Any]) -> Any:
    def audit() -> dict[str, str]:
        store = ObjectStoreBackend(
            StoreSettings(path=f"s3://{s3_bucket}/airflow/state", storage_options=s3_options)
        ).store
        return _audit_codes(store)

    return audit


def _lifecycle(s3_client: Any, bucket: str, *rules: dict[str, Any]) -> None:
    s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": list(rules)})


def test_a_bare_bucket_gets_the_hygiene_warnings(audit_s3: Any) -> None:
    findings = audit_s3()
    assert findings["S3_NO_ABORT_MULTIPART"] == "warning"
    assert findings["S3_NO_DEFAULT_ENCRYPTION"] == "warning"
    assert findings["S3_PUBLIC_ACCESS_NOT_BLOCKED"] == "warning"
    assert "S3_LIFECYCLE_EXPIRES_STATE" not in findings


def test_a_well_set_bucket_has_no_findings(audit_s3: Any, s3_client: Any, s3_bucket: str) -> None:
    _lifecycle(
        s3_client,
        s3_bucket,
        {
            "ID": "abort",
            "Status": "Enabled",
            "Filter": {"Prefix": "airflow/state/"},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
        {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}},
    )
    s3_client.put_bucket_encryption(
        Bucket=s3_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3_client.put_public_access_block(
        Bucket=s3_bucket,
        PublicAccessBlockConfiguration={
            k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
        },
    )
    assert audit_s3() == {}


def test_lifecycle_expiring_current_objects_under_the_prefix_is_an_error(
    audit_s3: Any, s3_client: Any, s3_bucket: str
) -> None:
    _lifecycle(
        s3_client,
        s3_bucket,
        {"ID": "expire-everything", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 7}},
    )
    assert audit_s3()["S3_LIFECYCLE_EXPIRES_STATE"] == "error"


def test_lifecycle_transitions_of_state_are_reported_by_what_they_cost(
    s3_client: Any, s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    """Archived state cannot be read (an error); infrequent-access classes bill minimum durations."""

    def rule(name: str, rule_filter: dict[str, Any], storage_class: str, *, noncurrent: bool = False) -> dict[str, Any]:
        if noncurrent:
            transitions = {"NoncurrentVersionTransitions": [{"NoncurrentDays": 1, "StorageClass": storage_class}]}
        else:
            transitions = {"Transitions": [{"Days": 30, "StorageClass": storage_class}]}
        return {"ID": name, "Status": "Enabled", "Filter": rule_filter, **transitions}

    _lifecycle(
        s3_client,
        s3_bucket,
        rule("glacier-state", {"And": {"Prefix": "airflow/", "ObjectSizeGreaterThan": 1024}}, "GLACIER"),
        rule("deep-archive-all", {"Prefix": ""}, "DEEP_ARCHIVE"),
        rule("ia-state", {"Prefix": "airflow/state/task/"}, "STANDARD_IA"),
        rule("glacier-ir-big", {"ObjectSizeGreaterThan": 1024}, "GLACIER_IR"),
        rule("tiering", {"Prefix": "airflow/state"}, "INTELLIGENT_TIERING"),
        rule("old-versions", {"Prefix": "airflow/"}, "DEEP_ARCHIVE", noncurrent=True),
        rule("logs", {"Prefix": "logs/"}, "GLACIER"),
        rule("tagged", {"Tag": {"Key": "archive", "Value": "yes"}}, "DEEP_ARCHIVE"),
    )
    rule_filters = s3_client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert {r["ID"]: r["Filter"] for r in rule_filters}["tagged"] == {"Tag": {"Key": "archive", "Value": "yes"}}
    store = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/airflow/state", storage_options=s3_options)).store
    findings = [f for f in run_audit(store).findings if f.code.startswith("S3_LIFECYCLE_")]
    reported = sorted((f.code, f.level, f.message.split("'")[1]) for f in findings)
    assert reported == [
        ("S3_LIFECYCLE_ARCHIVES_STATE", "error", "deep-archive-all"),
        ("S3_LIFECYCLE_ARCHIVES_STATE", "error", "glacier-state"),
        ("S3_LIFECYCLE_INTELLIGENT_TIERING", "info", "tiering"),
        ("S3_LIFECYCLE_TIERS_NONCURRENT_STATE", "warning", "old-versions"),
        ("S3_LIFECYCLE_TIERS_STATE", "warning", "glacier-ir-big"),
        ("S3_LIFECYCLE_TIERS_STATE", "warning", "ia-state"),
    ]
    messages = {(f.code, f.message.split("'")[1]): f.message for f in findings}
    assert "InvalidObjectState" in messages["S3_LIFECYCLE_ARCHIVES_STATE", "glacier-state"]
    assert "at least 90 days" in messages["S3_LIFECYCLE_TIERS_STATE", "glacier-ir-big"]
    assert "at least 30 days" in messages["S3_LIFECYCLE_TIERS_STATE", "ia-state"]
    assert "at least 180 days" in messages["S3_LIFECYCLE_TIERS_NONCURRENT_STATE", "old-versions"]


def test_versioning_without_noncurrent_expiry_is_a_warning(audit_s3: Any, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    assert audit_s3()["S3_VERSIONING_NO_NONCURRENT_EXPIRY"] == "warning"
    _lifecycle(
        s3_client,
        s3_bucket,
        {
            "ID": "noncurrent",
            "Status": "Enabled",
            "Filter": {"Prefix": "airflow/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
        },
    )
    assert "S3_VERSIONING_NO_NONCURRENT_EXPIRY" not in audit_s3()


def test_a_policy_denying_deletes_is_an_error(audit_s3: Any, s3_client: Any, s3_bucket: str) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NoDeletes",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:DeleteObject",
                "Resource": f"arn:aws:s3:::{s3_bucket}/*",
            }
        ],
    }
    s3_client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(policy))
    assert audit_s3()["S3_POLICY_DENIES_DELETE"] == "error"


def test_object_lock_with_default_retention_is_an_error(s3_client: Any, s3_options: dict[str, Any]) -> None:
    bucket = "locked-state-bucket"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3_client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    store = ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/state", storage_options=s3_options)).store
    assert {f.code: f.level for f in run_audit(store).findings}["S3_OBJECT_LOCK_BLOCKS_DELETE"] == "error"


# -- GCS findings from bucket resources ----------------------------------------------------------


def _gcs(name: str) -> dict[str, str]:
    resource = json.loads((GCS_BUCKETS / f"{name}.json").read_text())
    return {f.code: f.level for f in check_gcs_bucket(resource, "airflow/state/")}


def test_gcs_default_bucket() -> None:
    """A bucket as created with defaults: soft delete 7 days, no lifecycle, prevention inherited."""
    assert _gcs("default") == {
        "GCS_NO_CUSTOM_TIME_RULE": "info",
        "GCS_SOFT_DELETE": "warning",
        "GCS_PUBLIC_ACCESS_PREVENTION": "warning",
    }


def test_gcs_bucket_set_up_for_the_state_store() -> None:
    assert _gcs("recommended") == {}


def test_gcs_age_rule_versioning_and_retention() -> None:
    assert _gcs("dangerous") == {
        "GCS_LIFECYCLE_DELETES_LIVE_STATE": "error",
        "GCS_RETENTION_POLICY": "error",
        "GCS_LIFECYCLE_CHANGES_STORAGE_CLASS": "warning",  # NEARLINE after 7 days, whole bucket
        "GCS_VERSIONING": "warning",
        "GCS_NO_CUSTOM_TIME_RULE": "info",
        "GCS_SOFT_DELETE": "warning",
    }


def test_gcs_colder_storage_classes_are_warnings_with_their_minimum_durations() -> None:
    """Reads still answer in every GCS class, but each object is billed a minimum duration and reads a fee."""
    resource = json.loads((GCS_BUCKETS / "cold.json").read_text())
    findings = check_gcs_bucket(resource, "airflow/state/")
    classes = [f for f in findings if f.code in ("GCS_DEFAULT_STORAGE_CLASS", "GCS_LIFECYCLE_CHANGES_STORAGE_CLASS")]
    assert {(f.code, f.level) for f in classes} == {
        ("GCS_DEFAULT_STORAGE_CLASS", "warning"),
        ("GCS_LIFECYCLE_CHANGES_STORAGE_CLASS", "warning"),
    }
    messages = {f.message.split(": each")[0].split()[-1]: f.message for f in classes}
    assert len(classes) == 3 and len(messages) == 3  # not the rule on logs/, nor the one to STANDARD
    assert "default storage class puts new state in NEARLINE" in messages["NEARLINE"]
    assert "at least 30 days" in messages["NEARLINE"] and "$0.01/GB" in messages["NEARLINE"]
    assert "moves noncurrent versions of state to COLDLINE" in messages["COLDLINE"]
    assert "at least 90 days" in messages["COLDLINE"] and "$0.02/GB" in messages["COLDLINE"]
    assert "moves state objects to ARCHIVE" in messages["ARCHIVE"]
    assert "at least 365 days" in messages["ARCHIVE"] and "$0.05/GB" in messages["ARCHIVE"]

    autoclass = {**resource, "autoclass": {"enabled": True, "terminalStorageClass": "ARCHIVE"}, "lifecycle": {}}
    assert "GCS_DEFAULT_STORAGE_CLASS" not in {f.code for f in check_gcs_bucket(autoclass, "airflow/state/")}


# -- local, and the command ------------------------------------------------------------------------


def test_local_state_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    store = ObjectStoreBackend(StoreSettings(path=str(tmp_path / "state"))).store
    assert run_audit(store).findings == []  # created private
    os.chmod(store.root, 0o755)
    assert [f.code for f in run_audit(store).findings] == ["LOCAL_READABLE_BY_OTHERS"]


def test_audit_command_json_and_fail_on(
    s3_bucket: str, s3_options: dict[str, Any], s3_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "audit",
        "--path",
        f"s3://{s3_bucket}/airflow/state",
        "--storage-options",
        orjson.dumps(s3_options).decode(),
        "--json",
    ]
    assert cli.main(argv) == 0  # warnings only; --fail-on defaults to error
    document = orjson.loads(capsys.readouterr().out)
    assert set(document) == {"inventory", "findings"}
    assert all(set(f) == {"code", "level", "message"} for f in document["findings"])
    assert cli.main([*argv, "--fail-on", "warning"]) == 1
    capsys.readouterr()
    _lifecycle(
        s3_client,
        s3_bucket,
        {"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": "airflow/"}, "Expiration": {"Days": 1}},
    )
    assert cli.main(argv) == 1
    assert "S3_LIFECYCLE_EXPIRES_STATE" in capsys.readouterr().out
    assert s3_options["secret"] not in str(document)


def test_bucket_settings_are_read_through_throttling_like_every_request(
    s3_client: Any, s3_bucket: str, s3_fault_options: dict[str, Any], s3_fault_proxy: CountingProxy
) -> None:
    _lifecycle(
        s3_client, s3_bucket, {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}
    )
    store = ObjectStoreBackend(
        StoreSettings(path=f"s3://{s3_bucket}/airflow/state", storage_options=s3_fault_options)
    ).store
    reads_settings = lambda request: request.method == "GET" and "lifecycle" in request.query  # noqa: E731
    passing = s3_fault_proxy.inject("503", when=reads_settings, times=2)
    assert _audit_codes(store)["S3_LIFECYCLE_EXPIRES_STATE"] == "error"  # the rule was read, after 2 retries
    assert sum(passing.injected.values()) == 2
    s3_fault_proxy.reset()

    s3_fault_proxy.inject("503", when=reads_settings)  # throttled for good: a finding, not a crash
    findings = {f.code: f.message for f in run_audit(store).findings}
    assert "S3_LIFECYCLE_EXPIRES_STATE" not in findings
    assert "failed after 5 attempts: SlowDown" in findings["S3_CANNOT_READ_LIFECYCLE"]


def test_a_setting_the_caller_may_not_read_is_a_finding_not_a_crash() -> None:
    from objstore_backend.audit import check_s3_bucket

    denied = PermissionError("AccessDenied: s3:GetLifecycleConfiguration")
    findings = {f.code: f for f in check_s3_bucket({"lifecycle": denied, "encryption": {"x": 1}}, "airflow/state/")}
    assert findings["S3_CANNOT_READ_LIFECYCLE"].level == "warning"
    assert "AccessDenied" in findings["S3_CANNOT_READ_LIFECYCLE"].message
    assert "S3_NO_ABORT_MULTIPART" not in findings  # unknown, not guessed


# -- Azure findings: the data plane on Azurite, lifecycle policies in the management API's shape -----


@pytest.fixture
def azure_audit(azure_container: str, azure_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)

    def audit(options: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = StoreSettings(
            path=f"abfs://{azure_container}/airflow/state", storage_options=options or azure_options
        )
        return {f.code: f for f in run_audit(ObjectStoreBackend(settings).store).findings}

    return audit


def test_a_bare_azure_container_says_the_lifecycle_policy_could_not_be_read(azure_audit: Any) -> None:
    findings = azure_audit()
    assert set(findings) == {"AZURE_CANNOT_READ_LIFECYCLE_POLICY"}
    finding = findings["AZURE_CANNOT_READ_LIFECYCLE_POLICY"]
    assert finding.level == "warning" and "AZURE_SUBSCRIPTION_ID is not set" in finding.message


def test_azure_soft_delete_and_public_access_are_reported(
    azure_audit: Any, azure_container: str, azure_proxy: CountingProxy
) -> None:
    from azure.storage.blob import BlobServiceClient, RetentionPolicy

    from tests.servers import azurite_connection_string

    service = BlobServiceClient.from_connection_string(azurite_connection_string(azure_proxy.url))
    service.get_container_client(azure_container).set_container_access_policy({}, public_access="blob")
    service.set_service_properties(delete_retention_policy=RetentionPolicy(enabled=True, days=7))
    try:
        findings = azure_audit()
    finally:  # the account's setting: every container of the session shares it
        service.set_service_properties(delete_retention_policy=RetentionPolicy(enabled=False))
    assert findings["AZURE_SOFT_DELETE"].level == "warning" and "7 days" in findings["AZURE_SOFT_DELETE"].message
    assert findings["AZURE_PUBLIC_ACCESS"].level == "error" and "(blob)" in findings["AZURE_PUBLIC_ACCESS"].message


def test_what_a_container_sas_cannot_read_is_a_finding(
    azure_audit: Any, azure_container: str, azure_proxy: CountingProxy
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        azure_container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    endpoint = f"BlobEndpoint={azure_proxy.url}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"
    findings = azure_audit({"connection_string": endpoint})
    unreadable = findings["AZURE_CANNOT_READ_BLOB_SERVICE_PROPERTIES"]
    assert unreadable.level == "warning" and "HTTP 403" in unreadable.message
    assert "sig=" not in unreadable.message and "AZURE_CANNOT_READ_LIFECYCLE_POLICY" in findings


def _policy(*rules: dict[str, Any]) -> dict[str, Any]:
    """A management policy as the management API returns it, built with azure-mgmt-storage's own models."""
    from azure.mgmt.storage.models import ManagementPolicy

    document = ManagementPolicy({"properties": {"policy": {"rules": list(rules)}}}).as_dict()
    return dict(document["properties"])


def _rule(name: str, prefixes: list[str] | None, base_blob: dict[str, Any], **filters: Any) -> dict[str, Any]:
    rule_filters = {"blobTypes": ["blockBlob"], **({"prefixMatch": prefixes} if prefixes else {}), **filters}
    return {
        "name": name,
        "enabled": True,
        "type": "Lifecycle",
        "definition": {"filters": rule_filters, "actions": {"baseBlob": base_blob}},
    }


def test_azure_lifecycle_rules_that_reach_live_state_are_errors() -> None:
    from objstore_backend.audit_azure import check_azure_lifecycle

    delete_30 = {"delete": {"daysAfterModificationGreaterThan": 30}}
    policy = _policy(
        _rule("whole-account", None, delete_30),
        _rule("state-prefix", ["state/airflow"], {"delete": {"daysAfterLastAccessTimeGreaterThan": 7}}),
        _rule("archive", ["state/airflow/state/task"], {"tierToArchive": {"daysAfterModificationGreaterThan": 90}}),
        _rule("other-container", ["logs/airflow"], delete_30),
        _rule("other-prefix", ["state/exports"], delete_30),
        _rule("tagged", ["state/airflow"], delete_30, blobIndexMatch=[{"name": "t", "op": "==", "value": "x"}]),
        _rule("cool-only", ["state/airflow"], {"tierToCool": {"daysAfterModificationGreaterThan": 30}}),
    )
    findings = check_azure_lifecycle(policy, "state", "airflow/state/")
    reported = sorted((f.code, f.message.split("'")[1]) for f in findings)
    assert reported == [
        ("AZURE_LIFECYCLE_ARCHIVES_STATE", "archive"),
        ("AZURE_LIFECYCLE_DELETES_STATE", "state-prefix"),
        ("AZURE_LIFECYCLE_DELETES_STATE", "whole-account"),
    ]
    assert all(f.level == "error" for f in findings)
    assert check_azure_lifecycle(None, "state", "airflow/state/") == []  # no policy at all


def test_azure_container_locks_are_errors() -> None:
    from objstore_backend.audit_azure import check_azure_container

    locked = {
        "has_immutability_policy": True,
        "has_legal_hold": True,
        "immutable_storage_with_versioning_enabled": True,
    }
    levels = {f.code: f.level for f in check_azure_container({"delete_retention_policy": {}}, locked)}
    assert levels == {
        "AZURE_IMMUTABILITY_POLICY": "error",
        "AZURE_LEGAL_HOLD": "error",
        "AZURE_VERSION_IMMUTABILITY": "warning",
    }
