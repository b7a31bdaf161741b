variable "resource_group_name" {
  description = "Resource group of the storage account and the managed identities."
  type        = string
}

variable "location" {
  description = "Azure region: the AKS cluster's (e.g. westeurope)."
  type        = string
}

variable "storage_account_name" {
  description = "Name of the storage account that holds the state store (3 to 24 lowercase letters and digits, globally unique). One account per Airflow deployment."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name must be 3 to 24 lowercase letters and digits."
  }
}

variable "container_name" {
  description = "Name of the state container (the path is abfs://CONTAINER/PREFIX). The role assignments are scoped to it."
  type        = string
  default     = "airflow-state"

  validation {
    condition     = can(regex("^[a-z0-9](-?[a-z0-9])*$", var.container_name)) && length(var.container_name) >= 3 && length(var.container_name) <= 63
    error_message = "container_name must be 3 to 63 lowercase letters, digits and single dashes, starting and ending with a letter or digit."
  }
}

variable "state_prefix" {
  description = "Blob name prefix of the state store inside the container (the path is abfs://CONTAINER/PREFIX)."
  type        = string
  default     = "airflow/state/"

  validation {
    condition     = can(regex("^[^/*?].*/$", var.state_prefix)) && !can(regex("['\\\\]", var.state_prefix))
    error_message = "state_prefix must be non-empty, end with \"/\", not start with \"/\" or a wildcard, and contain no quote or backslash."
  }
}

variable "replication_type" {
  description = "Replication of the storage account: ZRS (zone-redundant, the default), or GZRS / RAGZRS for a copy in the paired region."
  type        = string
  default     = "ZRS"

  validation {
    condition     = contains(["ZRS", "GZRS", "RAGZRS", "GRS", "RAGRS"], var.replication_type)
    error_message = "replication_type must be ZRS, GZRS, RAGZRS, GRS or RAGRS (LRS keeps a single zone)."
  }
}

variable "soft_delete_retention_days" {
  description = "Days a deleted or overwritten blob (and a deleted container) stays restorable. See the comment in main.tf before changing it."
  type        = number
  default     = 7

  validation {
    condition     = var.soft_delete_retention_days >= 1 && var.soft_delete_retention_days <= 365
    error_message = "Azure accepts 1 to 365 days."
  }
}

variable "allowed_subnet_ids" {
  description = "Subnets (with the Microsoft.Storage service endpoint) that may reach the account: the AKS node pools' subnets."
  type        = list(string)
}

variable "log_analytics_workspace_id" {
  description = "Log Analytics workspace that receives the blob service's read, write and delete logs."
  type        = string
}

variable "aks_oidc_issuer_url" {
  description = "OIDC issuer URL of the AKS cluster (az aks show --query oidcIssuerProfile.issuerUrl); the cluster needs the OIDC issuer and workload identity enabled."
  type        = string
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
  description = "Prefix of the managed identities (PREFIX-airflow, PREFIX-gc, PREFIX-audit) and of the diagnostic setting."
  type        = string
  default     = "airflow-state"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,40}$", var.name_prefix))
    error_message = "name_prefix must be 3 to 41 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags of the storage account and the managed identities."
  type        = map(string)
  default = {
    application = "airflow"
    component   = "objstore-backend"
  }
}
