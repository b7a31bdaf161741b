variable "project_id" {
  description = "Project of the bucket, the service accounts and the GKE cluster (whose workload identity pool is PROJECT.svc.id.goog)."
  type        = string
}

variable "location" {
  description = "Bucket location: the GKE cluster's region (e.g. europe-west1), or a multi-region."
  type        = string
}

variable "bucket_name" {
  description = "Name of the GCS bucket that holds the state store. One bucket per Airflow deployment."
  type        = string
}

variable "state_prefix" {
  description = "Object prefix of the state store inside the bucket (the path is gs://BUCKET/PREFIX). The lifecycle rule and every IAM grant are scoped to it."
  type        = string
  default     = "airflow/state/"

  validation {
    condition     = can(regex("^[^/*?].*/$", var.state_prefix)) && !can(regex("['\\\\]", var.state_prefix))
    error_message = "state_prefix must be non-empty, end with \"/\", not start with \"/\" or a wildcard, and contain no quote or backslash (it is embedded in IAM condition expressions)."
  }
}

variable "soft_delete_retention_seconds" {
  description = "Soft delete retention of the bucket: 0 (off) or 604800 to 7776000 seconds (7 to 90 days). See the comment in main.tf before changing it."
  type        = number
  default     = 604800

  validation {
    condition     = var.soft_delete_retention_seconds == 0 || (var.soft_delete_retention_seconds >= 604800 && var.soft_delete_retention_seconds <= 7776000)
    error_message = "GCS accepts 0 or 7 to 90 days (604800 to 7776000 seconds)."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which GCS aborts an XML API multipart upload that was never completed."
  type        = number
  default     = 1
}

variable "kubernetes_namespace" {
  description = "Namespace of the Airflow release and of the GC and audit jobs."
  type        = string
  default     = "airflow"
}

variable "airflow_service_accounts" {
  description = "Kubernetes service accounts of the Airflow components that read and write state. Offload mode: the workers and the triggerer; primary mode: the API server. Names are those of the official Helm chart for a release called \"airflow\"; keep only the ones your mode needs."
  type        = list(string)
  default     = ["airflow-worker", "airflow-triggerer", "airflow-api-server"]
}

variable "gc_service_account" {
  description = "Kubernetes service account of the GC CronJob (kubernetes/base/serviceaccounts.yaml)."
  type        = string
  default     = "objstore-backend-gc"
}

variable "audit_service_account" {
  description = "Kubernetes service account of the audit CronJob (kubernetes/base/serviceaccounts.yaml)."
  type        = string
  default     = "objstore-backend-audit"
}

variable "name_prefix" {
  description = "Prefix of the Google service account ids (PREFIX-airflow, PREFIX-gc, PREFIX-audit; at most 22 characters) and, with dashes as underscores, of the custom role ids."
  type        = string
  default     = "airflow-state"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,21}$", var.name_prefix))
    error_message = "name_prefix must be 5 to 22 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "labels" {
  description = "Labels of the bucket."
  type        = map(string)
  default = {
    application = "airflow"
    component   = "objstore-backend"
  }
}
