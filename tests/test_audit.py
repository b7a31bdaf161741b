"""The audit: the inventory on real stores, and each bucket finding from a real configuration.

S3 findings come from buckets configured through boto3 on moto's server. The GCS emulator does
not keep bucket lifecycle, soft delete or retention settings, so the GCS checks are fed bucket
resources in the JSON API's documented shape (``GET storage/v1/b/{bucket}``), written out in
tests/gcs_buckets/ from Google's reference for the bucket resource, not recorded from a bucket.
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
        "GCS_VERSIONING": "warning",
        "GCS_NO_CUSTOM_TIME_RULE": "info",
        "GCS_SOFT_DELETE": "warning",
    }


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
