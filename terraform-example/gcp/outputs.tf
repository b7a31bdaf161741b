output "bucket" {
  description = "Name of the state bucket."
  value       = google_storage_bucket.state.name
}

output "state_path" {
  description = "Base path of the state store: AIRFLOW__OBJSTORE_BACKEND__PATH and OBJSTORE_BACKEND_PATH."
  value       = "gs://${google_storage_bucket.state.name}/${var.state_prefix}"
}

output "airflow_service_account" {
  description = "Google service account of the Airflow workers, triggerer and API server: the iam.gke.io/gcp-service-account annotation in airflow/values-gcp-*.yaml."
  value       = google_service_account.this["airflow"].email
}

output "gc_service_account" {
  description = "Google service account of the GC CronJob: the iam.gke.io/gcp-service-account annotation in kubernetes/overlays/gcp."
  value       = google_service_account.this["gc"].email
}

output "audit_service_account" {
  description = "Google service account of the audit CronJob: the iam.gke.io/gcp-service-account annotation in kubernetes/overlays/gcp."
  value       = google_service_account.this["audit"].email
}
