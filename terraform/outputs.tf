output "url" {
  description = "Public base URL of the gateway (DICOMGW_PUBLIC_URL)."
  value       = local.public_url
}

output "alb_dns_name" {
  description = "DNS name of the load balancer; point domain_name at it (alias record)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Route 53 hosted zone ID of the load balancer, for an alias record."
  value       = aws_lb.this.zone_id
}

output "bucket_name" {
  description = "Name of the data bucket (studies/, quarantine/, incoming/)."
  value       = aws_s3_bucket.data.id
}

output "bucket_arn" {
  description = "ARN of the data bucket."
  value       = aws_s3_bucket.data.arn
}

output "logs_bucket_name" {
  description = "Name of the bucket receiving the data bucket's server access logs."
  value       = aws_s3_bucket.logs.id
}

output "kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts objects, logs, secrets, the database and the queue."
  value       = aws_kms_key.this.arn
}

output "ecs_cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "Name of the ECS service (force a new deployment of it after changing a secret)."
  value       = aws_ecs_service.this.name
}

output "task_role_arn" {
  description = "ARN of the role the gateway containers run with."
  value       = aws_iam_role.task.arn
}

output "db_endpoint" {
  description = "Address and port of the catalog database (private)."
  value       = aws_db_instance.this.endpoint
}

output "db_master_user_secret_arn" {
  description = "ARN of the RDS-managed secret holding the master user's password (input for the database-url secret)."
  value       = try(aws_db_instance.this.master_user_secret[0].secret_arn, null)
}

output "signing_keys_secret_arn" {
  description = "ARN of the secret holding DICOMGW_SIGNING_KEYS."
  value       = aws_secretsmanager_secret.signing_keys.arn
}

output "api_keys_secret_arn" {
  description = "ARN of the secret holding DICOMGW_API_KEYS."
  value       = aws_secretsmanager_secret.api_keys.arn
}

output "database_url_secret_arn" {
  description = "ARN of the secret holding DICOMGW_DATABASE_URL."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "upload_hook_function_name" {
  description = "Name of the Lambda that runs the upload hooks on objects created under incoming/."
  value       = aws_lambda_function.upload_hook.function_name
}

output "upload_hook_dlq_url" {
  description = "URL of the dead-letter queue of the upload hook."
  value       = aws_sqs_queue.upload_hook_dlq.url
}

output "retention_function_name" {
  description = "Name of the Lambda that applies the policy's [retention] section on its EventBridge schedule."
  value       = aws_lambda_function.retention.function_name
}

output "log_group_names" {
  description = "CloudWatch log groups of NGINX (masked access log), the gateway and the upload hook."
  value = {
    nginx       = aws_cloudwatch_log_group.nginx.name
    gateway     = aws_cloudwatch_log_group.gateway.name
    upload_hook = aws_cloudwatch_log_group.upload_hook.name
    retention   = aws_cloudwatch_log_group.retention.name
  }
}
