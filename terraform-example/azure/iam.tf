# User-assigned managed identities for the Kubernetes service accounts (AKS
# workload identity), one per job, each federated to its service accounts and
# given a built-in data role on the state container only.
#
#   airflow : the Airflow components that read and write state
#   gc      : the GC CronJob (list with metadata, delete in blob batches)
#   audit   : the audit CronJob (read-only, plus the account's settings)

locals {
  workload_identity_service_accounts = {
    airflow = var.airflow_service_accounts
    gc      = [var.gc_service_account]
    audit   = [var.audit_service_account]
  }

  # One federated credential per (managed identity, Kubernetes service account).
  workload_identity_bindings = merge([
    for identity, ksas in local.workload_identity_service_accounts : {
      for ksa in ksas : "${identity}/${ksa}" => { identity = identity, ksa = ksa }
    }
  ]...)

  # Built-in roles, on the container. Overwriting a blob is a write; the GC
  # deletes and lists; the audit only reads.
  container_roles = {
    airflow = "Storage Blob Data Contributor"
    gc      = "Storage Blob Data Contributor"
    audit   = "Storage Blob Data Reader"
  }
}

resource "azurerm_user_assigned_identity" "this" {
  for_each = local.workload_identity_service_accounts

  name                = "${var.name_prefix}-${each.key}"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = var.tags
}

resource "azurerm_federated_identity_credential" "workload_identity" {
  for_each = local.workload_identity_bindings

  name                = "${var.name_prefix}-${each.value.identity}-${each.value.ksa}"
  resource_group_name = var.resource_group_name
  parent_id           = azurerm_user_assigned_identity.this[each.value.identity].id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.aks_oidc_issuer_url
  subject             = "system:serviceaccount:${var.kubernetes_namespace}:${each.value.ksa}"
}

resource "azurerm_role_assignment" "container" {
  for_each = local.container_roles

  scope                = azurerm_storage_container.state.id
  role_definition_name = each.value
  principal_id         = azurerm_user_assigned_identity.this[each.key].principal_id
  principal_type       = "ServicePrincipal"
  description          = "objstore-backend ${each.key}: ${each.value} on the state container only"
}

# The audit also reads the account's own settings: the lifecycle management
# policy and the blob service's soft delete (management plane, read-only; it
# grants no data access).
resource "azurerm_role_assignment" "audit_account" {
  scope                = azurerm_storage_account.state.id
  role_definition_name = "Reader"
  principal_id         = azurerm_user_assigned_identity.this["audit"].principal_id
  principal_type       = "ServicePrincipal"
  description          = "objstore-backend audit: read the state account's lifecycle policy and blob service settings"
}
