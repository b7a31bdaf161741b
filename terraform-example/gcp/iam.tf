# Google service accounts for the Kubernetes service accounts (GKE Workload
# Identity), one per job, with custom roles that hold only the permissions each
# job uses, granted on the bucket under an IAM condition that keeps them inside
# the state prefix.
#
#   airflow : the Airflow components that read and write state
#   gc      : the GC CronJob (list the prefix, read metadata, delete)
#   audit   : the audit CronJob (read-only, plus the bucket's own settings)

locals {
  role_id_prefix = replace(var.name_prefix, "-", "_")

  workload_identity_service_accounts = {
    airflow = var.airflow_service_accounts
    gc      = [var.gc_service_account]
    audit   = [var.audit_service_account]
  }

  # One binding per (Google service account, Kubernetes service account).
  workload_identity_bindings = merge([
    for gsa, ksas in local.workload_identity_service_accounts : {
      for ksa in ksas : "${gsa}/${ksa}" => { gsa = gsa, ksa = ksa }
    }
  ]...)

  # CEL condition of every object grant: objects under the prefix, or (for
  # storage.objects.list, which is checked against the bucket) listings whose
  # prefix is under it. A request outside the prefix matches neither branch.
  state_prefix_condition = join(" || ", [
    "resource.name.startsWith('projects/_/buckets/${google_storage_bucket.state.name}/objects/${var.state_prefix}')",
    "(resource.type == 'storage.googleapis.com/Bucket' && api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('${var.state_prefix}'))",
  ])

  object_roles = {
    # Overwriting an object needs storage.objects.delete as well as create.
    airflow = [
      "storage.objects.create",
      "storage.objects.delete",
      "storage.objects.get",
      "storage.objects.list",
    ]
    # Listings carry each object's metadata and generation; the GC deletes
    # with ifGenerationMatch.
    gc = [
      "storage.objects.delete",
      "storage.objects.get",
      "storage.objects.list",
    ]
    audit = [
      "storage.objects.get",
      "storage.objects.list",
    ]
  }
}

resource "google_service_account" "this" {
  for_each = local.workload_identity_service_accounts

  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "objstore-backend ${each.key}"
  description  = "objstore-backend ${each.key} access to gs://${var.bucket_name}/${var.state_prefix} (GKE workload identity)"
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each = local.workload_identity_bindings

  service_account_id = google_service_account.this[each.value.gsa].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.kubernetes_namespace}/${each.value.ksa}]"
}

resource "google_project_iam_custom_role" "objects" {
  for_each = local.object_roles

  role_id     = "${local.role_id_prefix}_${each.key}"
  title       = "objstore-backend ${each.key}"
  description = "Object permissions of the objstore-backend ${each.key}; granted on the state bucket under a prefix condition."
  permissions = each.value
}

resource "google_storage_bucket_iam_member" "objects" {
  for_each = local.object_roles

  bucket = google_storage_bucket.state.name
  role   = google_project_iam_custom_role.objects[each.key].id
  member = "serviceAccount:${google_service_account.this[each.key].email}"

  condition {
    title       = "state-prefix-only"
    description = "Objects and listings under ${var.state_prefix} only"
    expression  = local.state_prefix_condition
  }
}

# The audit also reads the bucket's own settings: lifecycle rules, versioning,
# soft delete, retention policy, uniform access and public access prevention.
# storage.buckets.get on this bucket only; it grants no object access.
resource "google_project_iam_custom_role" "audit_bucket" {
  role_id     = "${local.role_id_prefix}_audit_bucket"
  title       = "objstore-backend audit (bucket settings)"
  description = "Read the state bucket's configuration."
  permissions = ["storage.buckets.get"]
}

resource "google_storage_bucket_iam_member" "audit_bucket" {
  bucket = google_storage_bucket.state.name
  role   = google_project_iam_custom_role.audit_bucket.id
  member = "serviceAccount:${google_service_account.this["audit"].email}"
}
