variable "region" {
  description = "AWS region of the bucket (and of the EKS cluster that uses it)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the S3 bucket that holds the state store. One bucket per Airflow deployment: the lifecycle rules and the bucket policy assume it holds nothing else."
  type        = string
}

variable "state_prefix" {
  description = "Key prefix of the state store inside the bucket (the path is s3://BUCKET/PREFIX). Every IAM grant is scoped to it."
  type        = string
  default     = "airflow/state/"

  validation {
    condition     = can(regex("^[^/*?].*/$", var.state_prefix))
    error_message = "state_prefix must be non-empty, end with \"/\" and start with neither \"/\" nor a wildcard, so that the IAM grants cannot reach a sibling prefix."
  }
}

variable "eks_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (IRSA), e.g. arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE."
  type        = string

  validation {
    condition     = can(regex("^arn:[^:]+:iam::[0-9]{12}:oidc-provider/.+$", var.eks_oidc_provider_arn))
    error_message = "eks_oidc_provider_arn must be an IAM OIDC provider ARN."
  }
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

variable "access_log_bucket" {
  description = "Existing bucket that receives the S3 server access logs of the state bucket (usually the organisation's central log bucket; it must allow logging.s3.amazonaws.com to write)."
  type        = string
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted state object stays recoverable as a noncurrent version before S3 removes it."
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && var.noncurrent_version_retention_days <= 90
    error_message = "Keep noncurrent versions between 1 and 90 days: they are billed like live data."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which S3 aborts a multipart upload that was never completed (a crashed writer leaves billed, invisible parts)."
  type        = number
  default     = 1
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted after `terraform destroy` (every object encrypted with it becomes unreadable then)."
  type        = number
  default     = 30
}

variable "role_name_prefix" {
  description = "Prefix of the IAM role names: PREFIX-airflow, PREFIX-gc, PREFIX-audit."
  type        = string
  default     = "airflow-state"
}

variable "permissions_boundary_arn" {
  description = "Optional permissions boundary attached to the three IAM roles, if your organisation requires one."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default = {
    Application = "airflow"
    Component   = "objstore-backend"
  }
}
