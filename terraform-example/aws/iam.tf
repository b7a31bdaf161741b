# IAM roles for Kubernetes service accounts (IRSA), one per job, least privilege.
#
#   airflow : the Airflow components that read and write state
#             (get/put/delete objects under the prefix, list the prefix for clears)
#   gc      : the GC CronJob (list the prefix, HEAD and delete objects under it)
#   audit   : the audit CronJob (read-only: list, read objects, read the
#             bucket's lifecycle, versioning, encryption and access settings)
#
# Every object grant is "<bucket ARN>/<state_prefix>*" and every s3:ListBucket
# grant carries an s3:prefix condition, so no role can read or delete anything
# outside the state store's prefix.

locals {
  # "oidc.eks.REGION.amazonaws.com/id/XXXX": the issuer host the trust policies key on.
  oidc_issuer = element(split("oidc-provider/", var.eks_oidc_provider_arn), 1)

  irsa_service_accounts = {
    airflow = var.airflow_service_accounts
    gc      = [var.gc_service_account]
    audit   = [var.audit_service_account]
  }

  role_policies = {
    airflow = data.aws_iam_policy_document.airflow.json
    gc      = data.aws_iam_policy_document.gc.json
    audit   = data.aws_iam_policy_document.audit.json
  }

  # kms:ViaService: the key is usable through S3 in this region only, never directly.
  s3_service = "s3.${var.region}.${data.aws_partition.current.dns_suffix}"
}

# Only the named service accounts of the namespace, presenting a token for STS.
data "aws_iam_policy_document" "assume" {
  for_each = local.irsa_service_accounts

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [for sa in each.value : "system:serviceaccount:${var.kubernetes_namespace}:${sa}"]
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.irsa_service_accounts

  name                 = "${var.role_name_prefix}-${each.key}"
  description          = "objstore-backend ${each.key} access to s3://${var.bucket_name}/${var.state_prefix}"
  assume_role_policy   = data.aws_iam_policy_document.assume[each.key].json
  permissions_boundary = var.permissions_boundary_arn
}

resource "aws_iam_role_policy" "this" {
  for_each = local.role_policies

  name   = "objstore-backend-${each.key}"
  role   = aws_iam_role.this[each.key].id
  policy = each.value
}

# Airflow workers, triggerer and API server.
data "aws_iam_policy_document" "airflow" {
  statement {
    sid       = "ListStatePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.state_prefix}*"]
    }
  }

  statement {
    sid = "ReadWriteDeleteStateObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
    ]
    resources = ["${aws_s3_bucket.state.arn}/${var.state_prefix}*"]
  }

  # GET decrypts, PUT asks KMS for a data key.
  statement {
    sid = "UseStateKeyThroughS3"
    actions = [
      "kms:Decrypt",
      "kms:GenerateDataKey",
    ]
    resources = [aws_kms_key.state.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }
  }
}

# GC: lists the prefix, HEADs each object for its expiry metadata (s3:GetObject
# covers HEAD), deletes the expired ones, and keeps an index of what it learnt
# under <state_prefix>~gc-index/ (written and read back each night, so the next
# run HEADs only what changed). Writing and reading the index through the
# bucket's KMS key needs kms:GenerateDataKey and kms:Decrypt; with the S3 Bucket
# Key on, KMS sees the bucket, not the object, so that grant cannot be narrowed
# to the index prefix. A deployment that wants the GC unable to decrypt state
# values points `--index` at a bucket encrypted with SSE-S3 and drops the
# UseStateKeyForTheIndex statement.
data "aws_iam_policy_document" "gc" {
  statement {
    sid       = "ListStatePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.state_prefix}*"]
    }
  }

  statement {
    sid = "HeadAndDeleteStateObjects"
    actions = [
      "s3:GetObject",
      "s3:DeleteObject",
    ]
    resources = ["${aws_s3_bucket.state.arn}/${var.state_prefix}*"]
  }

  statement {
    sid       = "WriteGCIndex"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.state.arn}/${var.state_prefix}~gc-index/*"]
  }

  statement {
    sid = "UseStateKeyForTheIndex"
    actions = [
      "kms:Decrypt",
      "kms:GenerateDataKey",
    ]
    resources = [aws_kms_key.state.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }
  }
}

# Audit: read-only.
data "aws_iam_policy_document" "audit" {
  statement {
    sid       = "ListStatePrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.state_prefix}*"]
    }
  }

  statement {
    sid       = "ReadStateObjects"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.state.arn}/${var.state_prefix}*"]
  }

  statement {
    sid = "ReadBucketConfiguration"
    actions = [
      "s3:GetLifecycleConfiguration",
      "s3:GetBucketVersioning",
      "s3:GetEncryptionConfiguration",
      "s3:GetBucketPublicAccessBlock",
      "s3:GetBucketPolicy",
      "s3:GetBucketObjectLockConfiguration",
      "s3:GetBucketOwnershipControls",
    ]
    resources = [aws_s3_bucket.state.arn]
  }

  statement {
    sid       = "DecryptThroughS3"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.state.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }
  }
}
