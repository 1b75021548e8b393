################################################################################
# Retention: an EventBridge schedule invokes a Lambda that runs `dicom-gateway retention run`
# (gateway.lambda_handler.retention) with the same package as the upload hook, so expired instances go exactly as
# a DELETE removes them (catalog first, then the objects; README "Lifecycle").
################################################################################

resource "aws_sqs_queue" "retention_dlq" {
  name                              = "${var.name}-retention-dlq"
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  message_retention_seconds         = 1209600
  tags                              = local.tags
}

resource "aws_lambda_function" "retention" {
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the package is built reproducibly from a tagged commit by build-lambda.sh and its SHA-256 pins the deployment (source_code_hash).
  function_name = "${var.name}-retention"
  description   = "dicom-gateway retention: removes instances older than the policy's [retention] section allows"
  role          = aws_iam_role.retention.arn
  runtime       = "python3.11"
  handler       = "gateway.lambda_handler.retention"
  architectures = ["x86_64"]

  filename         = var.lambda_package
  source_code_hash = filebase64sha256(var.lambda_package)

  memory_size = 512
  timeout     = 900
  # one run at a time: a second schedule tick while a long run is going waits its turn
  reserved_concurrent_executions = 1
  kms_key_arn                    = aws_kms_key.this.arn

  tracing_config {
    mode = "Active"
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.retention_dlq.arn
  }

  vpc_config {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.lambda.id]
  }

  environment {
    variables = {
      DICOMGW_MODE                    = "production"
      DICOMGW_STORAGE_URL             = "s3://${local.data_bucket_name}"
      DICOMGW_PHI_POLICY              = var.retention_policy_path
      DICOMGW_SIGNING_KEYS_SECRET_ARN = aws_secretsmanager_secret.signing_keys.arn
      DICOMGW_API_KEYS_SECRET_ARN     = aws_secretsmanager_secret.api_keys.arn
      DICOMGW_DATABASE_URL_SECRET_ARN = aws_secretsmanager_secret.database_url.arn
    }
  }

  tags = local.tags

  depends_on = [
    aws_cloudwatch_log_group.retention,
    aws_iam_role_policy.retention,
    aws_iam_role_policy_attachment.retention_vpc,
  ]
}

resource "aws_cloudwatch_event_rule" "retention" {
  name                = "${var.name}-retention"
  description         = "Runs the dicom-gateway retention Lambda"
  schedule_expression = var.retention_schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "retention" {
  rule = aws_cloudwatch_event_rule.retention.name
  arn  = aws_lambda_function.retention.arn
}

resource "aws_lambda_permission" "events_invoke_retention" {
  statement_id  = "AllowRetentionSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.retention.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.retention.arn
}
