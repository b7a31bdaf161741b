output "bucket" {
  description = "Name of the state bucket."
  value       = aws_s3_bucket.state.bucket
}

output "state_path" {
  description = "Base path of the state store: AIRFLOW__OBJSTORE_BACKEND__PATH and OBJSTORE_BACKEND_PATH."
  value       = "s3://${aws_s3_bucket.state.bucket}/${var.state_prefix}"
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the bucket."
  value       = aws_kms_key.state.arn
}

output "airflow_role_arn" {
  description = "IRSA role of the Airflow workers, triggerer and API server: the eks.amazonaws.com/role-arn annotation in airflow/values-aws-*.yaml."
  value       = aws_iam_role.this["airflow"].arn
}

output "gc_role_arn" {
  description = "IRSA role of the GC CronJob: the eks.amazonaws.com/role-arn annotation in kubernetes/overlays/aws."
  value       = aws_iam_role.this["gc"].arn
}

output "audit_role_arn" {
  description = "IRSA role of the audit CronJob: the eks.amazonaws.com/role-arn annotation in kubernetes/overlays/aws."
  value       = aws_iam_role.this["audit"].arn
}
