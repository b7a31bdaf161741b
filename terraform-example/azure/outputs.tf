output "storage_account" {
  description = "Name of the storage account: the account_name storage option."
  value       = azurerm_storage_account.state.name
}

output "container" {
  description = "Name of the state container."
  value       = azurerm_storage_container.state.name
}

output "state_path" {
  description = "Base path of the state store: AIRFLOW__OBJSTORE_BACKEND__PATH and OBJSTORE_BACKEND_PATH."
  value       = "abfs://${azurerm_storage_container.state.name}/${var.state_prefix}"
}

output "storage_options" {
  description = "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS and OBJSTORE_BACKEND_STORAGE_OPTIONS: the account, and DefaultAzureCredential (workload identity)."
  value       = jsonencode({ account_name = azurerm_storage_account.state.name, anon = false })
}

output "airflow_client_id" {
  description = "Client id of the Airflow workers', triggerer's and API server's managed identity: the azure.workload.identity/client-id annotation in airflow/values-azure-*.yaml."
  value       = azurerm_user_assigned_identity.this["airflow"].client_id
}

output "gc_client_id" {
  description = "Client id of the GC CronJob's managed identity: the azure.workload.identity/client-id annotation in kubernetes/overlays/azure."
  value       = azurerm_user_assigned_identity.this["gc"].client_id
}

output "audit_client_id" {
  description = "Client id of the audit CronJob's managed identity: the azure.workload.identity/client-id annotation in kubernetes/overlays/azure."
  value       = azurerm_user_assigned_identity.this["audit"].client_id
}
