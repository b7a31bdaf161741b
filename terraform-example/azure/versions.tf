terraform {
  required_version = ">= 1.6.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # >= 4.0: storage containers are created through the Resource Manager
      # (storage_account_id), so the account can keep shared-key access off.
      # Commit the .terraform.lock.hcl that `terraform init` writes to pin the
      # exact build.
      version = ">= 4.0, < 5.0"
    }
  }
}

provider "azurerm" {
  features {}

  # Shared-key access is off on the account (main.tf): the provider must use
  # Entra ID for the data plane too.
  storage_use_azuread = true
}
