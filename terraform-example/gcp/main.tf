# The GCS bucket of the objstore-backend state store.
#
# The backend sets each expiring object's customTime to its expiry, so the
# lifecycle rule `daysSinceCustomTime = 0` under the prefix lets GCS delete
# expired keys by itself; the GC CronJob then only mops up (and handles the
# offload-mode reconciliation). Objects that never expire carry no customTime
# and are never matched. No rule deletes by age: that would destroy live state.

resource "google_storage_bucket" "state" {
  #checkov:skip=CKV_GCP_62:Legacy usage logs are not used: access to the bucket is recorded by Cloud Audit Logs (Admin Activity always; Data Access logs for storage.googleapis.com are enabled at the organisation or project level, see README.md), which Google recommends over usage logs.
  #checkov:skip=CKV_GCP_78:Object versioning stays off on purpose: soft delete (below) already keeps every deleted or overwritten state object restorable for its retention; versioning on top would keep a second, listable copy of each version, billed until a further lifecycle rule removes it, and would turn the lifecycle rule's deletes into noncurrent versions.
  name     = var.bucket_name
  location = var.location

  storage_class = "STANDARD"

  # IAM only (no ACLs), so the prefix-scoped IAM conditions in iam.tf decide.
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Never delete a bucket that still holds state on `terraform destroy`.
  force_destroy = false

  # No retention policy (it would block the deletes of expired and cleared
  # state) and no versioning (see the skip above and soft delete below).
  versioning {
    enabled = false
  }

  # Soft delete, set deliberately rather than left at the provider default.
  #
  # 7 days (the shortest non-zero value): a wrong `clear`, a GC bug or a bad
  # deployment can be undone by restoring the soft-deleted objects, the same
  # recovery window as the noncurrent-version expiry of the AWS example.
  # The cost: every overwrite and every delete (including the lifecycle rule's)
  # keeps the old object billed for 7 days, so a key rewritten in a tight loop
  # accumulates copies; the audit reports it. For such workloads set
  # soft_delete_retention_seconds = 0 and accept that deletes are final.
  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_seconds
  }

  # Expired state: customTime (the object's expiry) is today or earlier.
  # `send_days_since_custom_time_if_zero` is REQUIRED: without it the provider
  # drops the zero and the rule would match every object under the prefix.
  lifecycle_rule {
    action {
      type = "Delete"
    }

    condition {
      days_since_custom_time              = 0
      send_days_since_custom_time_if_zero = true
      matches_prefix                      = [var.state_prefix]
    }
  }

  # Parts of an XML API multipart upload whose writer died are billed and
  # invisible. This rule acts on uploads, never on objects.
  lifecycle_rule {
    action {
      type = "AbortIncompleteMultipartUpload"
    }

    condition {
      age            = var.abort_incomplete_multipart_upload_days
      matches_prefix = [var.state_prefix]
    }
  }

  labels = var.labels
}
