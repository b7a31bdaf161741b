"""Offline invariants of terraform-example/ (no provider can be downloaded, so no
`terraform validate`): every .tf file parses with python-hcl2, and the parsed
configuration keeps the promises of terraform-example/README.md. The lifecycle
rules never expire current state by age, every IAM grant stays under the state
prefix, the buckets are encrypted and private, and the Kubernetes CronJobs are
hardened and run the real `objstore-backend` command lines.

`terraform fmt -check` and checkov run in terraform-example/check.sh.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "terraform-example"
CLOUDS = ("aws", "gcp", "azure")
TF_FILES = {"versions.tf", "variables.tf", "main.tf", "iam.tf", "outputs.tf"}

# Plain values: strings without their HCL quotes, blocks as lists of dicts.
HCL_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)

STATE_PREFIX = "${var.state_prefix}"
S3_BUCKET_ARN = "${aws_s3_bucket.state.arn}"
S3_STATE_OBJECTS_ARN = f"{S3_BUCKET_ARN}/{STATE_PREFIX}*"
KMS_KEY_ARN = "${aws_kms_key.state.arn}"
S3_GC_INDEX_ARN = f"{S3_BUCKET_ARN}/{STATE_PREFIX}~gc-index/*"


# --- HCL helpers ---------------------------------------------------------------


def parse_tf(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f, serialization_options=HCL_OPTIONS)


@functools.cache
def module(cloud: str) -> dict[str, list[dict[str, Any]]]:
    """Every top-level block of the cloud's .tf files, merged by block kind."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((EXAMPLE / cloud).glob("*.tf")):
        for kind, blocks in parse_tf(path).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def labelled(cloud: str, kind: str, type_: str) -> dict[str, dict[str, Any]]:
    """{name: body} of the `resource` or `data` blocks of one type."""
    found: dict[str, dict[str, Any]] = {}
    for block in module(cloud).get(kind, []):
        for name, body in block.get(type_, {}).items():
            assert name not in found, f"{kind} {type_}.{name} defined twice"
            found[name] = body
    return found


def resources(cloud: str, type_: str) -> dict[str, dict[str, Any]]:
    return labelled(cloud, "resource", type_)


def one_resource(cloud: str, type_: str) -> dict[str, Any]:
    found = resources(cloud, type_)
    assert len(found) == 1, f"expected exactly one {type_}, found {sorted(found)}"
    return next(iter(found.values()))


def variable(cloud: str, name: str) -> dict[str, Any]:
    for block in module(cloud)["variable"]:
        if name in block:
            return block[name]
    raise AssertionError(f"{cloud}: no variable {name!r}")


def local(cloud: str, name: str) -> Any:
    for block in module(cloud).get("locals", []):
        if name in block:
            return block[name]
    raise AssertionError(f"{cloud}: no local {name!r}")


def blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A nested block as a list, [] when absent."""
    value = body.get(name, [])
    return value if isinstance(value, list) else [value]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def hcl_unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def validation_regexes(cloud: str, name: str) -> list[tuple[bool, str]]:
    """(must_match, pattern) for each `can(regex(...))` in a variable's validations."""
    found = []
    for rule in blocks(variable(cloud, name), "validation"):
        for negated, pattern in re.findall(
            r'(!?)can\(regex\("((?:[^"\\]|\\.)*)", var\.' + name + r"\)\)",
            rule["condition"],
        ):
            found.append((negated != "!", hcl_unescape(pattern)))
    return found


def prefix_is_valid(cloud: str, prefix: str) -> bool:
    rules = validation_regexes(cloud, "state_prefix")
    assert rules, f"{cloud}: state_prefix has no regex validation"
    return all(bool(re.search(p, prefix)) == must for must, p in rules)


# --- Terraform: every cloud ------------------------------------------------------


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_tf_file_parses_and_the_layout_is_complete(cloud: str) -> None:
    paths = sorted((EXAMPLE / cloud).glob("*.tf"))
    assert {p.name for p in paths} == TF_FILES
    for path in paths:
        assert parse_tf(path), f"{path} parsed to nothing"
    assert not list(EXAMPLE.glob("*.tf")), "Terraform belongs in aws/, gcp/ or azure/"


@pytest.mark.parametrize(("cloud", "provider"), [("aws", "aws"), ("gcp", "google"), ("azure", "azurerm")])
def test_providers_are_pinned(cloud: str, provider: str) -> None:
    (terraform,) = module(cloud)["terraform"]
    assert terraform["required_version"].startswith(">=")
    (required,) = terraform["required_providers"]
    spec = required[provider]
    assert spec["source"] == f"hashicorp/{provider}"
    version = spec["version"]
    # An upper bound: a new major provider version is never picked up unseen.
    assert version.startswith("~>") or "<" in version, version


@pytest.mark.parametrize("cloud", CLOUDS)
def test_state_prefix_validation_admits_only_a_real_prefix(cloud: str) -> None:
    default = variable(cloud, "state_prefix")["default"]
    assert default == "airflow/state/"
    assert prefix_is_valid(cloud, default)
    assert prefix_is_valid(cloud, "state/")
    for bad in ("", "airflow/state", "/airflow/state/", "*/", "airflow/*"):
        assert not prefix_is_valid(cloud, bad), bad


# --- AWS: bucket -------------------------------------------------------------------


def s3_lifecycle_rules() -> list[dict[str, Any]]:
    (config,) = resources("aws", "aws_s3_bucket_lifecycle_configuration").values()
    assert config["bucket"] == "${aws_s3_bucket.state.id}"
    return blocks(config, "rule")


def test_no_s3_lifecycle_rule_expires_current_objects() -> None:
    rules = s3_lifecycle_rules()
    assert rules
    for rule in rules:
        assert rule["status"] == "Enabled", rule["id"]
        # Transitions are no expiry, but nothing here needs them either.
        assert "transition" not in rule, rule["id"]
        for expiration in blocks(rule, "expiration"):
            # days/date would expire current objects by age: live state.
            assert set(expiration) == {"expired_object_delete_marker"}, rule["id"]
            assert expiration["expired_object_delete_marker"] is True, rule["id"]
    # The legacy inline form on the bucket would bypass the checks above.
    for bucket in resources("aws", "aws_s3_bucket").values():
        assert "lifecycle_rule" not in bucket


def test_s3_abort_incomplete_multipart_rule_exists() -> None:
    aborts = [abort for rule in s3_lifecycle_rules() for abort in blocks(rule, "abort_incomplete_multipart_upload")]
    assert len(aborts) == 1
    days = aborts[0]["days_after_initiation"]
    assert days == "${var.abort_incomplete_multipart_upload_days}"
    assert variable("aws", "abort_incomplete_multipart_upload_days")["default"] >= 1


def test_s3_versioning_has_noncurrent_expiry() -> None:
    versioning = one_resource("aws", "aws_s3_bucket_versioning")
    (config,) = versioning["versioning_configuration"]
    if config["status"] == "Enabled":
        expiries = [e for rule in s3_lifecycle_rules() for e in blocks(rule, "noncurrent_version_expiration")]
        assert len(expiries) == 1
        assert expiries[0]["noncurrent_days"] == "${var.noncurrent_version_retention_days}"
        assert 1 <= variable("aws", "noncurrent_version_retention_days")["default"] <= 90
    else:
        assert config["status"] in ("Disabled", "Suspended")


def test_s3_public_access_fully_blocked_and_acls_disabled() -> None:
    block = one_resource("aws", "aws_s3_bucket_public_access_block")
    for setting in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[setting] is True, setting
    (ownership,) = one_resource("aws", "aws_s3_bucket_ownership_controls")["rule"]
    assert ownership["object_ownership"] == "BucketOwnerEnforced"


def test_s3_default_encryption_with_its_own_rotated_kms_key() -> None:
    config = one_resource("aws", "aws_s3_bucket_server_side_encryption_configuration")
    (rule,) = config["rule"]
    (default,) = rule["apply_server_side_encryption_by_default"]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == KMS_KEY_ARN
    assert rule["bucket_key_enabled"] is True
    key = one_resource("aws", "aws_kms_key")
    assert key["enable_key_rotation"] is True


def test_s3_bucket_is_kept_and_not_locked() -> None:
    bucket = one_resource("aws", "aws_s3_bucket")
    assert bucket["force_destroy"] is False
    assert bucket["object_lock_enabled"] is False


def test_s3_bucket_policy_is_tls_only() -> None:
    policy = labelled("aws", "data", "aws_iam_policy_document")["bucket"]
    denies = {s["sid"]: s for s in policy["statement"] if s.get("effect") == "Deny"}
    resources_ = [S3_BUCKET_ARN, f"{S3_BUCKET_ARN}/*"]

    transport = denies["DenyInsecureTransport"]
    assert transport["actions"] == ["s3:*"]
    assert transport["resources"] == resources_
    (condition,) = transport["condition"]
    assert (condition["test"], condition["variable"], condition["values"]) == (
        "Bool",
        "aws:SecureTransport",
        ["false"],
    )
    tls = denies["DenyOutdatedTLS"]
    assert tls["resources"] == resources_
    (condition,) = tls["condition"]
    assert (condition["variable"], condition["values"]) == ("s3:TlsVersion", ["1.2"])
    for statement in denies.values():
        (principal,) = statement["principals"]
        assert principal == {"type": "*", "identifiers": ["*"]}
    bucket_policy = one_resource("aws", "aws_s3_bucket_policy")
    assert bucket_policy["policy"] == "${data.aws_iam_policy_document.bucket.json}"


# --- AWS: IAM ----------------------------------------------------------------------


def iam_statements(name: str) -> list[dict[str, Any]]:
    document = labelled("aws", "data", "aws_iam_policy_document")[name]
    statements = document["statement"]
    assert statements
    return statements


def iam_actions(name: str) -> set[str]:
    return {a for s in iam_statements(name) for a in s["actions"]}


@pytest.mark.parametrize("role", ["airflow", "gc", "audit"])
def test_iam_statement_resources_stay_under_the_prefix(role: str) -> None:
    for statement in iam_statements(role):
        assert statement.get("effect", "Allow") == "Allow"
        assert "not_actions" not in statement and "not_resources" not in statement
        actions = statement["actions"]
        assert not any("*" in a for a in actions), actions
        for resource in statement["resources"]:
            if resource == S3_GC_INDEX_ARN:  # the GC's index: written by the GC alone
                assert role == "gc" and actions == ["s3:PutObject"], (role, actions)
            elif resource == S3_STATE_OBJECTS_ARN:
                assert resource.endswith(f"/{STATE_PREFIX}*")
                assert all(a.startswith("s3:") and "Bucket" not in a for a in actions)
            elif resource == S3_BUCKET_ARN:
                # Bucket-level: listing (prefix-conditioned, below) or, for the
                # audit only, reading the bucket's own configuration.
                if actions != ["s3:ListBucket"]:
                    assert role == "audit", actions
                    assert all(a.startswith("s3:Get") for a in actions), actions
                    assert not {"s3:GetObject", "s3:ListBucket"} & set(actions)
            elif resource == KMS_KEY_ARN:
                assert all(a.startswith("kms:") for a in actions)
                (condition,) = statement["condition"]
                assert condition["variable"] == "kms:ViaService"
                assert condition["values"] == ["${local.s3_service}"]
            else:
                pytest.fail(f"{role}: resource outside the state store: {resource}")


@pytest.mark.parametrize("role", ["airflow", "gc", "audit"])
def test_list_bucket_carries_a_prefix_condition(role: str) -> None:
    listing = [s for s in iam_statements(role) if "s3:ListBucket" in s["actions"]]
    assert len(listing) == 1
    (statement,) = listing
    assert statement["actions"] == ["s3:ListBucket"]
    assert statement["resources"] == [S3_BUCKET_ARN]
    (condition,) = statement["condition"]
    assert condition == {
        "test": "StringLike",
        "variable": "s3:prefix",
        "values": [f"{STATE_PREFIX}*"],
    }


def test_iam_actions_per_role_are_least_privilege() -> None:
    assert iam_actions("airflow") == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    # The GC lists, HEADs (s3:GetObject) and deletes; it writes only its index (~gc-index/).
    assert iam_actions("gc") == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:PutObject",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    audit = iam_actions("audit")
    assert audit >= {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:GetLifecycleConfiguration",
        "s3:GetBucketVersioning",
        "s3:GetEncryptionConfiguration",
        "s3:GetBucketPublicAccessBlock",
        "s3:GetBucketPolicy",
        "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketOwnershipControls",
    }
    # Read-only.
    assert all(re.fullmatch(r"s3:(Get|List)\w+|kms:Decrypt", a) for a in audit), audit


def test_irsa_roles_trust_only_their_service_accounts() -> None:
    assume = labelled("aws", "data", "aws_iam_policy_document")["assume"]
    assert assume["for_each"] == "${local.irsa_service_accounts}"
    (statement,) = assume["statement"]
    assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    (principal,) = statement["principals"]
    assert principal == {"type": "Federated", "identifiers": ["${var.eks_oidc_provider_arn}"]}
    conditions = {c["variable"]: c for c in statement["condition"]}
    assert set(conditions) == {"${local.oidc_issuer}:aud", "${local.oidc_issuer}:sub"}
    assert all(c["test"] == "StringEquals" for c in conditions.values())
    assert conditions["${local.oidc_issuer}:aud"]["values"] == ["sts.amazonaws.com"]
    assert (
        "system:serviceaccount:${var.kubernetes_namespace}:${sa}" in (conditions["${local.oidc_issuer}:sub"]["values"])
    )
    assert set(local("aws", "irsa_service_accounts")) == {"airflow", "gc", "audit"}
    policies = local("aws", "role_policies")
    assert policies == {role: f"${{data.aws_iam_policy_document.{role}.json}}" for role in ("airflow", "gc", "audit")}


# --- GCP ----------------------------------------------------------------------------


def gcs_bucket() -> dict[str, Any]:
    return one_resource("gcp", "google_storage_bucket")


def gcs_rules(action: str) -> list[dict[str, Any]]:
    rules = []
    for rule in blocks(gcs_bucket(), "lifecycle_rule"):
        (act,) = rule["action"]
        if act["type"] == action:
            (condition,) = rule["condition"]
            rules.append(condition)
    return rules


def test_gcs_bucket_is_private_and_kept() -> None:
    bucket = gcs_bucket()
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["force_destroy"] is False
    # A retention policy would block the deletes of expired and cleared state.
    assert "retention_policy" not in bucket


def test_gcs_lifecycle_rule_types_are_known() -> None:
    types = [r["action"][0]["type"] for r in blocks(gcs_bucket(), "lifecycle_rule")]
    assert sorted(types) == ["AbortIncompleteMultipartUpload", "Delete"]


NONCURRENT_CONDITIONS = {
    "days_since_noncurrent_time",
    "send_days_since_noncurrent_time_if_zero",
    "noncurrent_time_before",
    "num_newer_versions",
    "send_num_newer_versions_if_zero",
}


def test_gcs_delete_rules_match_only_expired_or_noncurrent_objects_under_the_prefix() -> None:
    deletes = gcs_rules("Delete")
    assert deletes
    for condition in deletes:
        allowed = {"days_since_custom_time", "send_days_since_custom_time_if_zero", "matches_prefix"}
        # No age, created_before, custom_time_before, storage class, with_state LIVE...
        assert set(condition) <= allowed | NONCURRENT_CONDITIONS, condition
        assert condition["matches_prefix"] == [STATE_PREFIX]
        assert "days_since_custom_time" in condition or set(condition) & NONCURRENT_CONDITIONS
        if condition.get("days_since_custom_time") == 0:
            # Without it the provider drops the 0, leaving a rule that matches
            # every object under the prefix.
            assert condition.get("send_days_since_custom_time_if_zero") is True
    expired = [c for c in deletes if c.get("days_since_custom_time") == 0]
    assert len(expired) == 1


def test_gcs_abort_multipart_rule_is_scoped() -> None:
    (abort,) = gcs_rules("AbortIncompleteMultipartUpload")
    assert abort["matches_prefix"] == [STATE_PREFIX]
    assert variable("gcp", "abort_incomplete_multipart_upload_days")["default"] >= 1


def test_gcs_soft_delete_and_versioning_are_set_deliberately() -> None:
    bucket = gcs_bucket()
    (soft_delete,) = bucket["soft_delete_policy"]
    assert soft_delete["retention_duration_seconds"] == "${var.soft_delete_retention_seconds}"
    default = variable("gcp", "soft_delete_retention_seconds")["default"]
    assert default == 0 or 7 * 86400 <= default <= 90 * 86400
    (versioning,) = bucket["versioning"]
    assert versioning["enabled"] is False


def cel_condition_holds(name: str, type_: str, list_prefix: str = "") -> bool:
    """Evaluate the bucket IAM condition (a join() of CEL strings) for one request."""
    expression = local("gcp", "state_prefix_condition")
    match = re.fullmatch(r'\$\{join\(" \|\| ", \[(.*)\]\)\}', expression, re.S)
    assert match, expression
    branches = re.findall(r'"((?:[^"\\]|\\.)*)"', match[1])
    assert len(branches) == 2, branches
    cel = " || ".join(branches)
    cel = cel.replace("${google_storage_bucket.state.name}", "state-bucket")
    cel = cel.replace(STATE_PREFIX, "airflow/state/")
    assert "${" not in cel, cel
    python = (
        cel.replace("api.getAttribute('storage.googleapis.com/objectListPrefix', '')", "list_prefix")
        .replace("resource.name", "name")
        .replace("resource.type", "type_")
        .replace(".startsWith(", ".startswith(")
        .replace("&&", " and ")
        .replace("||", " or ")
    )
    assert re.fullmatch(r"[\w\s.()'=/,-]*", python), python
    return eval(python, {"__builtins__": {}}, {"name": name, "type_": type_, "list_prefix": list_prefix})


def test_gcs_iam_condition_admits_only_the_prefix() -> None:
    obj = "storage.googleapis.com/Object"
    bucket = "storage.googleapis.com/Bucket"
    objects = "projects/_/buckets/state-bucket/objects/"
    assert cel_condition_holds(objects + "airflow/state/task/d/r/t/-1/k", obj)
    assert cel_condition_holds(objects + "airflow/state/asset/name/a/k", obj)
    assert not cel_condition_holds(objects + "airflow/other", obj)
    assert not cel_condition_holds(objects + "airflow/statefoo/k", obj)
    assert not cel_condition_holds("projects/_/buckets/state-bucket-2/objects/airflow/state/k", obj)
    root = "projects/_/buckets/state-bucket"
    assert cel_condition_holds(root, bucket, "airflow/state/")
    assert cel_condition_holds(root, bucket, "airflow/state/task/d/")
    assert not cel_condition_holds(root, bucket, "")
    assert not cel_condition_holds(root, bucket, "airflow/")


def test_gcs_object_grants_are_conditioned_custom_roles() -> None:
    roles = local("gcp", "object_roles")
    assert set(roles) == {"airflow", "gc", "audit"}
    assert set(roles["airflow"]) == {
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
        "storage.objects.list",
    }
    assert set(roles["gc"]) == {"storage.objects.delete", "storage.objects.get", "storage.objects.list"}
    assert set(roles["audit"]) == {"storage.objects.get", "storage.objects.list"}

    custom = resources("gcp", "google_project_iam_custom_role")
    assert custom["objects"]["for_each"] == "${local.object_roles}"
    assert custom["objects"]["permissions"] == "${each.value}"
    assert custom["audit_bucket"]["permissions"] == ["storage.buckets.get"]

    members = resources("gcp", "google_storage_bucket_iam_member")
    assert set(members) == {"objects", "audit_bucket"}
    objects = members["objects"]
    assert objects["for_each"] == "${local.object_roles}"
    assert objects["role"] == "${google_project_iam_custom_role.objects[each.key].id}"
    (condition,) = objects["condition"]
    assert condition["expression"] == "${local.state_prefix_condition}"
    # The one unconditioned grant reads the bucket's settings, no object.
    assert members["audit_bucket"]["role"] == "${google_project_iam_custom_role.audit_bucket.id}"
    assert members["audit_bucket"]["member"].endswith('this["audit"].email}')

    # Nothing is granted on the project or the whole of storage.
    for type_ in (
        "google_project_iam_member",
        "google_project_iam_binding",
        "google_project_iam_policy",
        "google_storage_bucket_iam_binding",
        "google_storage_bucket_iam_policy",
    ):
        assert not resources("gcp", type_), type_


def test_gcs_workload_identity_bindings() -> None:
    (binding,) = resources("gcp", "google_service_account_iam_member").values()
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == (
        "serviceAccount:${var.project_id}.svc.id.goog[${var.kubernetes_namespace}/${each.value.ksa}]"
    )
    assert set(local("gcp", "workload_identity_service_accounts")) == {"airflow", "gc", "audit"}


# --- Azure ------------------------------------------------------------------------------


def test_azure_storage_account_is_hardened_and_kept_private() -> None:
    account = one_resource("azure", "azurerm_storage_account")
    assert account["min_tls_version"] == "TLS1_2" and account["https_traffic_only_enabled"] is True
    assert account["allow_nested_items_to_be_public"] is False  # no anonymous blob access
    assert account["shared_access_key_enabled"] is False  # Entra ID only (the identity path allows it)
    assert account["local_user_enabled"] is False and account["default_to_oauth_authentication"] is True
    (rules,) = blocks(account, "network_rules")
    assert rules["default_action"] == "Deny"
    (container,) = resources("azure", "azurerm_storage_container").values()
    assert container["container_access_type"] == "private"
    (provider,) = module("azure")["provider"]
    assert provider["azurerm"]["storage_use_azuread"] is True  # the provider itself cannot use shared keys


def test_azure_soft_delete_is_set_deliberately_and_nothing_expires_blobs_by_age() -> None:
    (properties,) = blocks(one_resource("azure", "azurerm_storage_account"), "blob_properties")
    (retention,) = blocks(properties, "delete_retention_policy")
    assert retention["days"] == "${var.soft_delete_retention_days}"
    assert variable("azure", "soft_delete_retention_days")["default"] == 7
    assert properties["versioning_enabled"] is False
    # Azure lifecycle rules delete by age only: any rule on the prefix would delete never-expiring state
    assert not resources("azure", "azurerm_storage_management_policy")


def test_azure_identities_are_federated_to_their_service_accounts_only() -> None:
    (credential,) = resources("azure", "azurerm_federated_identity_credential").values()
    assert credential["subject"] == "system:serviceaccount:${var.kubernetes_namespace}:${each.value.ksa}"
    assert credential["issuer"] == "${var.aks_oidc_issuer_url}"
    assert credential["audience"] == ["api://AzureADTokenExchange"]
    assert local("azure", "workload_identity_service_accounts") == {
        "airflow": "${var.airflow_service_accounts}",
        "gc": ["${var.gc_service_account}"],
        "audit": ["${var.audit_service_account}"],
    }


def test_azure_data_roles_are_scoped_to_the_container_and_least_privilege() -> None:
    assert local("azure", "container_roles") == {
        "airflow": "Storage Blob Data Contributor",
        "gc": "Storage Blob Data Contributor",
        "audit": "Storage Blob Data Reader",
    }
    assignments = resources("azure", "azurerm_role_assignment")
    assert assignments["container"]["scope"] == "${azurerm_storage_container.state.id}"
    # the audit's one grant above the container: Reader (management plane, no data access) on the account
    audit_account = assignments["audit_account"]
    assert audit_account["role_definition_name"] == "Reader"
    assert audit_account["principal_id"] == '${azurerm_user_assigned_identity.this["audit"].principal_id}'
    assert set(assignments) == {"container", "audit_account"}


# --- Kubernetes ------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


@functools.cache
def manifests() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every Kubernetes object under kubernetes/, kustomizations excluded."""
    found = []
    for path in sorted((EXAMPLE / "kubernetes").rglob("*.yaml")):
        for doc in yaml_documents(path):
            if doc["apiVersion"].startswith("kustomize.config.k8s.io/"):
                continue
            found.append((path, doc))
    assert found
    return tuple(found)


def objects(kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for _, doc in manifests():
        if doc["kind"] == kind:
            name = doc["metadata"]["name"]
            assert name not in found, f"{kind} {name} defined twice"
            found[name] = doc
    return found


def pod_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(cronjob)["containers"]
    return only


def config_map_data() -> dict[str, str]:
    return objects("ConfigMap")["objstore-backend"]["data"]


def container_env(cronjob: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (envFrom, then env)."""
    env: dict[str, str] = {}
    spec = container(cronjob)
    for source in spec.get("envFrom", []):
        assert source["configMapRef"]["name"] == "objstore-backend"
        env.update(config_map_data())
    for var in spec.get("env", []):
        if "valueFrom" in var:  # the downward API: only the Job's name is used
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
            env[var["name"]] = f"{cronjob['metadata']['name']}-29410417"  # a Job the CronJob made
        else:
            env[var["name"]] = var["value"]
    if cronjob["spec"]["jobTemplate"]["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = "0"  # set by the Job controller; a sample index
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion; an undefined $(VAR) is a test failure, not a literal."""

    def one(match: re.Match[str]) -> str:
        assert match[1] in env, f"$({match[1]}) is not defined in the container"
        return env[match[1]]

    return re.sub(r"\$\((\w+)\)", one, arg)


def command_line(cronjob: dict[str, Any]) -> list[str]:
    spec = container(cronjob)
    return [*spec.get("command", []), *spec.get("args", [])]


def cli_argv(cronjob: dict[str, Any]) -> list[str]:
    """The argv after `objstore-backend`, with $(VAR) expanded."""
    argv = command_line(cronjob)
    assert argv[0] == "objstore-backend", argv
    env = container_env(cronjob)
    return [expand(str(arg), env) for arg in argv[1:]]


CRONJOBS = {
    "objstore-backend-gc": "gc",
    "objstore-backend-gc-sharded": "gc",
    "objstore-backend-audit": "audit",
}


def test_the_cronjobs_are_there() -> None:
    assert set(objects("CronJob")) == set(CRONJOBS)


@pytest.mark.parametrize("name", sorted(CRONJOBS))
def test_cronjob_is_hardened(name: str) -> None:
    cronjob = objects("CronJob")[name]
    assert cronjob["metadata"]["namespace"] == "airflow"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    pod = pod_spec(cronjob)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] in objects("ServiceAccount")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"

    spec = container(cronjob)
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(spec["resources"][kind]), kind
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("name", sorted(CRONJOBS))
def test_cronjob_runs_the_objstore_backend_command(name: str) -> None:
    argv = command_line(objects("CronJob")[name])
    assert argv[:2] == ["objstore-backend", CRONJOBS[name]], argv
    assert argv[argv.index("--path") + 1] == "$(OBJSTORE_BACKEND_PATH)"
    assert "--json" in argv
    assert "--dry-run" not in argv
    if CRONJOBS[name] == "audit":
        assert argv[argv.index("--fail-on") + 1] in ("info", "warning", "error")
    expanded = cli_argv(objects("CronJob")[name])
    assert expanded[expanded.index("--path") + 1] == config_map_data()["OBJSTORE_BACKEND_PATH"]


def test_sharded_gc_is_an_indexed_job_whose_shards_cover_the_key_space() -> None:
    cronjob = objects("CronJob")["objstore-backend-gc-sharded"]
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    shards = job["completions"]
    assert shards > 1
    assert job["parallelism"] == shards
    argv = command_line(cronjob)
    assert argv[argv.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    # every shard of a run sweeps by one plan: the run is the Job, as the command reads it
    env = container_env(cronjob)
    assert env["OBJSTORE_BACKEND_RUN_ID"].startswith("objstore-backend-gc-sharded-")
    # The component swaps it in for the single GC, never beside it.
    component = yaml_documents(EXAMPLE / "kubernetes/components/sharded-gc/kustomization.yaml")[0]
    (patch,) = component["patches"]
    deleted = yaml.safe_load(patch["patch"])
    assert deleted["$patch"] == "delete"
    assert (deleted["kind"], deleted["metadata"]["name"]) == ("CronJob", "objstore-backend-gc")


def test_network_policy_selects_the_jobs_and_allows_no_ingress() -> None:
    policy = objects("NetworkPolicy")["objstore-backend"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["ingress"] == []
    for cronjob in objects("CronJob").values():
        labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def overlay_patches(cloud: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The overlay's strategic-merge patches by (kind, name); JSON patches (with a target) are left out."""
    kustomization = yaml_documents(EXAMPLE / f"kubernetes/overlays/{cloud}/kustomization.yaml")[0]
    assert "../../base" in kustomization["resources"]
    found = {}
    for patch in kustomization["patches"]:
        if "target" in patch:
            continue
        doc = yaml.safe_load(patch["patch"])
        assert doc["metadata"]["namespace"] == "airflow"
        found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def helm_values(cloud: str, mode: str) -> dict[str, Any]:
    (values,) = yaml_documents(EXAMPLE / f"airflow/values-{cloud}-{mode}.yaml")
    return values


CLOUD_IDENTITY = {
    "aws": ("s3://", "eks.amazonaws.com/role-arn"),
    "gcp": ("gs://", "iam.gke.io/gcp-service-account"),
    "azure": ("abfs://", "azure.workload.identity/client-id"),
}
#: An example client id of a managed identity in the Azure values (Terraform outputs the real ones).
CLIENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.parametrize("cloud", CLOUDS)
def test_overlay_points_at_the_bucket_with_the_cloud_identities(cloud: str) -> None:
    scheme, annotation = CLOUD_IDENTITY[cloud]
    patches = overlay_patches(cloud)
    path = patches[("ConfigMap", "objstore-backend")]["data"]["OBJSTORE_BACKEND_PATH"]
    assert path.startswith(scheme) and path.endswith("/" + variable(cloud, "state_prefix")["default"])
    identities = {}
    for job in ("gc", "audit"):
        service_account = variable(cloud, f"{job}_service_account")["default"]
        assert service_account in objects("ServiceAccount")
        identities[job] = patches[("ServiceAccount", service_account)]["metadata"]["annotations"][annotation]
    # Named as Terraform names them with its defaults.
    if cloud == "aws":
        prefix = variable("aws", "role_name_prefix")["default"]
        assert identities == {j: f"arn:aws:iam::111122223333:role/{prefix}-{j}" for j in identities}
    elif cloud == "azure":  # client ids: one identity per job
        assert all(CLIENT_ID.fullmatch(i) for i in identities.values()) and len(set(identities.values())) == 2
        storage_options = json.loads(
            patches[("ConfigMap", "objstore-backend")]["data"]["OBJSTORE_BACKEND_STORAGE_OPTIONS"]
        )
        assert storage_options == {"account_name": "exampleairflowstate", "anon": False}  # DefaultAzureCredential
    else:
        prefix = variable("gcp", "name_prefix")["default"]
        assert identities == {j: f"{prefix}-{j}@example-project.iam.gserviceaccount.com" for j in identities}
    # Airflow is pointed at the same path.
    for mode in ("offload", "primary"):
        env = {e["name"]: e["value"] for e in helm_values(cloud, mode)["env"]}
        assert env["AIRFLOW__OBJSTORE_BACKEND__PATH"] == path


def test_terraform_defaults_match_the_manifests() -> None:
    for cloud in CLOUDS:
        assert variable(cloud, "kubernetes_namespace")["default"] == "airflow"
        assert variable(cloud, "gc_service_account")["default"] == "objstore-backend-gc"
        assert variable(cloud, "audit_service_account")["default"] == "objstore-backend-audit"
    for name, cronjob in objects("CronJob").items():
        expected = f"objstore-backend-{CRONJOBS[name]}"
        assert pod_spec(cronjob)["serviceAccountName"] == expected


MODE_SETTING = {
    "offload": "AIRFLOW__WORKERS__STATE_STORE_BACKEND",
    "primary": "AIRFLOW__STATE_STORE__BACKEND",
}
# The official chart's service accounts for a release called "airflow".
CHART_COMPONENTS = {
    "offload": {"workers": "airflow-worker", "triggerer": "airflow-triggerer"},
    "primary": {"apiServer": "airflow-api-server"},
}


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("mode", sorted(MODE_SETTING))
def test_airflow_helm_values(cloud: str, mode: str) -> None:
    values = helm_values(cloud, mode)
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env[MODE_SETTING[mode]] == "objstore_backend.ObjectStoreBackend"
    other = next(s for m, s in MODE_SETTING.items() if m != mode)
    assert other not in env
    assert isinstance(json.loads(env["AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS"]), dict)
    assert env["AIRFLOW__OBJSTORE_BACKEND__COMPRESSION"]
    if mode == "offload":
        assert int(env["AIRFLOW__OBJSTORE_BACKEND__THRESHOLD_BYTES"]) >= 0
    assert all(isinstance(v, str) for v in env.values()), "env values must be strings"

    _, annotation = CLOUD_IDENTITY[cloud]
    identities = set()
    trusted = variable(cloud, "airflow_service_accounts")["default"]
    for component, service_account in CHART_COMPONENTS[mode].items():
        identities.add(values[component]["serviceAccount"]["annotations"][annotation])
        assert service_account in trusted
    assert len(identities) == 1
    (identity,) = identities
    if cloud == "azure":  # a client id; the pods also need the label the workload identity webhook looks for
        assert CLIENT_ID.fullmatch(identity) and values["labels"]["azure.workload.identity/use"] == "true"
        assert json.loads(env["AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS"])["anon"] is False
    else:
        assert "-airflow" in identity


# --- The real CLI (objstore_backend.cli, written beside this example) ------------------


def iter_cronjob_argvs() -> Iterator[tuple[str, list[str]]]:
    for name, cronjob in sorted(objects("CronJob").items()):
        yield name, cli_argv(cronjob)


def test_cronjob_command_lines_parse_with_the_real_cli() -> None:
    from objstore_backend.cli import build_parser

    parser = build_parser()
    # The parser rejects what it does not know, so a pass below means something.
    with pytest.raises(SystemExit):
        parser.parse_args(["gc", "--path", "s3://b/p/", "--no-such-flag"])
    for name, argv in iter_cronjob_argvs():
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{name}: objstore-backend {' '.join(argv)} rejected ({exc})")
