terraform {
  required_version = ">= 1.6.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # >= 6.0: from 6.0 on, a lifecycle condition's `age` is no longer sent as 0
      # when unset, and `send_days_since_custom_time_if_zero` exists (main.tf
      # depends on both). Commit the .terraform.lock.hcl that `terraform init`
      # writes to pin the exact build.
      version = ">= 6.0, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
}
