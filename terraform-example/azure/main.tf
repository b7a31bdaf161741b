# The storage account and container of the objstore-backend state store.
#
# Azure lifecycle management deletes only by days since a blob's modification,
# creation or last access: there is no rule that honours a per-blob expiry
# (no equivalent of GCS's daysSinceCustomTime). The GC CronJob is therefore the
# expiry mechanism, and no management policy here touches blobs under the
# prefix: a rule that deletes by age would delete never-expiring state.

resource "azurerm_storage_account" "state" {
  #checkov:skip=CKV_AZURE_59:Public network access stays enabled so that AKS nodes reach the account through the service endpoint of their subnet; network_rules deny every other network. Replace with a private endpoint (and set this to false) where the cluster's VNet has one.
  #checkov:skip=CKV2_AZURE_33:No private endpoint in this example: access is limited to the AKS subnets by network_rules (service endpoints); see CKV_AZURE_59 above.
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys, plus infrastructure (double) encryption. A customer-managed key needs a Key Vault and its own access policy, which this example leaves to the platform's key management.
  #checkov:skip=CKV_AZURE_33:The account serves blobs only; no queue is ever created, so there is no queue service to log.
  #checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) by default: state is recreated by Airflow's next runs and is useless without the cluster's region; geo-replication (GRS/GZRS) is a variable away for deployments that want it.
  name                = var.storage_account_name
  resource_group_name = var.resource_group_name
  location            = var.location

  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = var.replication_type

  # TLS 1.2 and HTTPS only; no anonymous access; no shared keys or SAS tokens
  # signed with them: every caller authenticates with Entra ID (workload
  # identity on AKS).
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true

  # User-delegation SAS tokens (the only kind left) expire within a day.
  sas_policy {
    expiration_period = "01.00:00:00"
  }

  network_rules {
    default_action             = "Deny"
    bypass                     = ["AzureServices"]
    virtual_network_subnet_ids = var.allowed_subnet_ids
  }

  blob_properties {
    # Soft delete, set deliberately: a wrong `clear`, a GC bug or a bad
    # deployment can be undone for `soft_delete_retention_days` (7, the same
    # window as the AWS and GCP examples). The cost: every delete, and every
    # overwrite (as a soft-deleted snapshot), stays billed for that long, so a
    # key rewritten in a tight loop accumulates copies; the audit reports it.
    delete_retention_policy {
      days = var.soft_delete_retention_days
    }

    container_delete_retention_policy {
      days = var.soft_delete_retention_days
    }

    # Off: soft delete already gives the recovery window, and versions would
    # keep a listable, billed copy of every write.
    versioning_enabled = false
  }

  tags = var.tags
}

# The container is dedicated to the store: the role assignments in iam.tf are
# scoped to it.
resource "azurerm_storage_container" "state" {
  #checkov:skip=CKV2_AZURE_21:Blob read, write and delete requests are logged by the diagnostic setting below (StorageRead, StorageWrite, StorageDelete); the check looks for azurerm_log_analytics_storage_insights instead, which authenticates with the account key, and shared-key access is off on this account.
  name                  = var.container_name
  storage_account_id    = azurerm_storage_account.state.id
  container_access_type = "private"
}

# Read, write and delete requests on the blob service, to the Log Analytics
# workspace the platform already runs.
resource "azurerm_monitor_diagnostic_setting" "blob" {
  name                       = "${var.name_prefix}-blob-logs"
  target_resource_id         = "${azurerm_storage_account.state.id}/blobServices/default"
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category = "StorageRead"
  }

  enabled_log {
    category = "StorageWrite"
  }

  enabled_log {
    category = "StorageDelete"
  }
}
