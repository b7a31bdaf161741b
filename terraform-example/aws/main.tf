# The S3 bucket of the objstore-backend state store.
#
# Expiry is NOT done by S3 here: S3 has no per-object absolute expiry, so the GC
# CronJob (kubernetes/) deletes keys whose `objstoreexpires` metadata has passed.
# The lifecycle rules below only clean up what the GC cannot see (noncurrent
# versions, delete markers, abandoned multipart uploads). None of them expires a
# current object by age: an age rule under the prefix would delete live task and
# asset state, including keys that must never expire.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# --- Encryption -------------------------------------------------------------
#
# SSE-KMS with a key of its own rather than SSE-S3: the key policy and the IAM
# grants below decide who can decrypt state values (the GC, which only lists,
# HEADs and deletes, gets no KMS access at all), key use is logged in
# CloudTrail, and the key can be disabled to cut off every reader at once.
# The S3 Bucket Key (bucket_key_enabled) keeps that affordable: without it every
# GET and PUT of a small state object is a KMS request, billed and counted
# against the account's KMS request quota.

resource "aws_kms_key" "state" {
  description             = "objstore-backend state store in s3://${var.bucket_name}/${var.state_prefix}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "state" {
  name          = "alias/${var.bucket_name}"
  target_key_id = aws_kms_key.state.key_id
}

# Key policy: the account owns the key and delegates its use to IAM, so the
# role policies in iam.tf are the only place that grants kms:Decrypt or
# kms:GenerateDataKey (and they do so only through S3, in this region).
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" is the key it is attached to; this is the account-root delegation statement AWS requires so the key stays manageable, and actual use is granted per role in iam.tf.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" is the key it is attached to; this is the account-root delegation statement AWS requires so the key stays manageable, and actual use is granted per role in iam.tf.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" is the key it is attached to, not every resource in the account; this is the standard account-root delegation statement.
  statement {
    sid       = "AccountRootDelegatesToIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

# --- Bucket -----------------------------------------------------------------

resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_144:No cross-region replication: the state store holds the working state of one Airflow deployment in one region; a replica in another region is useless without that deployment, every PUT/DELETE would be replicated (state keys are rewritten often), and versioning below already gives the recovery window.
  #checkov:skip=CKV2_AWS_62:No event notifications: nothing consumes object events of the state store; the GC finds expired keys by listing the prefix, and the audit CronJob reports on the bucket's contents.
  bucket = var.bucket_name

  # Never delete a bucket that still holds state on `terraform destroy`.
  force_destroy = false

  # No Object Lock: retention would make the GC's and Airflow's deletes of
  # expired or cleared state fail.
  object_lock_enabled = false
}

# ACLs disabled: access is decided by the bucket policy and IAM alone.
resource "aws_s3_bucket_ownership_controls" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket = aws_s3_bucket.state.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.state.arn
    }
    bucket_key_enabled = true
  }
}

# Versioning ON, with a short noncurrent-version expiry (lifecycle below).
#
# Why on: a wrong `clear`, a GC bug or a bad deployment can delete or overwrite
# asset state that cannot be recomputed (watermarks of incremental loads); for
# noncurrent_version_retention_days the previous versions can be restored.
# The cost is bounded: noncurrent versions and delete markers expire, so a key
# rewritten in a loop costs at most that many days of its old versions.
# The GC and Airflow delete without a version id, which only adds a delete
# marker: the object is gone for every reader at once.
resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  # Parts of a multipart upload whose writer died are invisible and billed.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  # Overwritten and deleted state stays restorable for a few days, then goes.
  # This acts on noncurrent versions only, never on the current object.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
  }

  # A delete marker with no version left behind it is clutter that slows
  # listings of the prefix (the GC and `clear` list it). This removes only such
  # markers: `expired_object_delete_marker` never touches a current object.
  rule {
    id     = "remove-expired-delete-markers"
    status = "Enabled"

    filter {}

    expiration {
      expired_object_delete_marker = true
    }
  }

  # Rules must see versioning already enabled.
  depends_on = [aws_s3_bucket_versioning.state]
}

resource "aws_s3_bucket_logging" "state" {
  bucket        = aws_s3_bucket.state.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.bucket_name}/"
}

# --- Bucket policy ------------------------------------------------------------
#
# Denies on top of IAM: no plain HTTP, no TLS older than 1.2, and no object
# written with another encryption than this bucket's KMS key (a value written
# with another key could not be read by the roles in iam.tf).

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.state.arn,
      "${aws_s3_bucket.state.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOutdatedTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.state.arn,
      "${aws_s3_bucket.state.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  statement {
    sid       = "DenyOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  statement {
    sid       = "DenyOtherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.state.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.state.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket = aws_s3_bucket.state.id
  policy = data.aws_iam_policy_document.bucket.json

  # A policy PUT races the public access block; apply the block first.
  depends_on = [aws_s3_bucket_public_access_block.state]
}
