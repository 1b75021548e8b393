################################################################################
# Direct uploads: S3 event (incoming/) -> Lambda running the same hook chain as STOW-RS
#
# The package is the gateway itself (plus its dependencies), built from this repository by
#   terraform/scripts/build-lambda.sh build/lambda.zip
# so the code that scans a direct upload is the code that scans a STOW upload (docs/design.md §7).
################################################################################

resource "aws_sqs_queue" "upload_hook_dlq" {
  name                              = "${var.name}-upload-hook-dlq"
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  # Two weeks to look at a failed upload before the message goes; the object itself waits under incoming/.
  message_retention_seconds = 1209600
  tags                      = local.tags
}

resource "aws_lambda_function" "upload_hook" {
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the package is built reproducibly from a tagged commit by build-lambda.sh and its SHA-256 pins the deployment (source_code_hash).
  function_name = "${var.name}-upload-hook"
  description   = "dicom-gateway upload hooks (PHI scan, policy, index) for objects dropped under incoming/"
  role          = aws_iam_role.upload_hook.arn
  runtime       = "python3.11"
  handler       = "gateway.lambda_handler.handler"
  architectures = ["x86_64"]

  filename         = var.lambda_package
  source_code_hash = filebase64sha256(var.lambda_package)

  memory_size                    = var.lambda_memory_mb
  timeout                        = var.lambda_timeout_seconds
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  kms_key_arn                    = aws_kms_key.this.arn

  ephemeral_storage {
    size = var.lambda_ephemeral_storage_mb
  }

  tracing_config {
    mode = "Active"
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.upload_hook_dlq.arn
  }

  vpc_config {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.lambda.id]
  }

  environment {
    # No secret values in the function configuration: each DICOMGW_<NAME>_SECRET_ARN names the Secrets Manager
    # secret that holds DICOMGW_<NAME>, read once per cold start. Settings.from_env() requires all three even
    # though the hook itself only uses the database URL.
    variables = {
      DICOMGW_MODE                    = "production"
      DICOMGW_STORAGE_URL             = "s3://${local.data_bucket_name}"
      DICOMGW_TMP_DIR                 = "/tmp"
      DICOMGW_SIGNING_KEYS_SECRET_ARN = aws_secretsmanager_secret.signing_keys.arn
      DICOMGW_API_KEYS_SECRET_ARN     = aws_secretsmanager_secret.api_keys.arn
      DICOMGW_DATABASE_URL_SECRET_ARN = aws_secretsmanager_secret.database_url.arn
    }
  }

  tags = local.tags

  depends_on = [
    aws_cloudwatch_log_group.upload_hook,
    aws_iam_role_policy.upload_hook,
    aws_iam_role_policy_attachment.upload_hook_vpc,
  ]
}

resource "aws_lambda_function_event_invoke_config" "upload_hook" {
  function_name                = aws_lambda_function.upload_hook.function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 21600
}

resource "aws_lambda_permission" "s3_invoke_upload_hook" {
  statement_id   = "AllowDataBucketEvents"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.upload_hook.function_name
  principal      = "s3.amazonaws.com"
  source_arn     = aws_s3_bucket.data.arn
  source_account = local.account_id
}

# A message in the dead-letter queue is an upload nobody can see yet: somebody should look.
resource "aws_cloudwatch_metric_alarm" "upload_hook_dlq" {
  alarm_name          = "${var.name}-upload-hook-dead-letters"
  alarm_description   = "Direct uploads the hook could not process; the objects wait under incoming/ (see docs/deploy.md)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.upload_hook_dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_topic_arns
  ok_actions          = var.alarm_topic_arns
  tags                = local.tags
}
