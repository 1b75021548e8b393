################################################################################
# Mobile derivatives (issue 14): after a STOW answer the gateway sends the SOP Instance UID to an SQS queue; a
# Lambda running the gateway's own code (gateway.derive via gateway.lambda_handler.derive_handler) makes the
# lossless HTJ2K derivative next to the instance under studies/ and publishes it in the catalog. A failed message is
# retried by SQS and, after derive_max_receives attempts, parked in the dead-letter queue: the original is served.
################################################################################

resource "aws_sqs_queue" "derive_dlq" {
  name                              = "${var.name}-derive-dlq"
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  message_retention_seconds         = 1209600
  tags                              = local.tags
}

resource "aws_sqs_queue" "derive" {
  name                              = "${var.name}-derive"
  kms_master_key_id                 = aws_kms_key.this.arn
  kms_data_key_reuse_period_seconds = 300
  # AWS requires at least the function's timeout; six times it is their advice for SQS event sources.
  visibility_timeout_seconds = var.derive_timeout_seconds * 6
  message_retention_seconds  = 345600
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.derive_dlq.arn
    maxReceiveCount     = var.derive_max_receives
  })
  tags = local.tags
}

resource "aws_lambda_function" "derive" {
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the package is built reproducibly from a tagged commit by build-lambda.sh and its SHA-256 pins the deployment (source_code_hash).
  function_name = "${var.name}-derive"
  description   = "dicom-gateway lossless HTJ2K derivatives for mobile viewers, from the derive queue"
  role          = aws_iam_role.derive.arn
  runtime       = "python3.11"
  handler       = "gateway.lambda_handler.derive_handler"
  architectures = ["x86_64"]

  filename         = var.lambda_package
  source_code_hash = filebase64sha256(var.lambda_package)

  memory_size                    = var.derive_memory_mb
  timeout                        = var.derive_timeout_seconds
  reserved_concurrent_executions = var.derive_reserved_concurrency
  kms_key_arn                    = aws_kms_key.this.arn

  ephemeral_storage {
    size = var.lambda_ephemeral_storage_mb
  }

  tracing_config {
    mode = "Active"
  }

  # Failed asynchronous invocations only; SQS batches are retried by the queue's own redrive policy.
  dead_letter_config {
    target_arn = aws_sqs_queue.derive_dlq.arn
  }

  vpc_config {
    subnet_ids         = var.private_subnet_ids
    security_group_ids = [aws_security_group.lambda.id]
  }

  environment {
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
    aws_cloudwatch_log_group.derive,
    aws_iam_role_policy.derive,
    aws_iam_role_policy_attachment.derive_vpc,
  ]
}

resource "aws_lambda_event_source_mapping" "derive" {
  event_source_arn        = aws_sqs_queue.derive.arn
  function_name           = aws_lambda_function.derive.arn
  batch_size              = 5
  function_response_types = ["ReportBatchItemFailures"]
}

resource "aws_cloudwatch_log_group" "derive" {
  name              = "/aws/lambda/${var.name}-derive"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_iam_role" "derive" {
  name               = "${var.name}-derive"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "derive_vpc" {
  role       = aws_iam_role.derive.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy_attachment" "derive_xray" {
  role       = aws_iam_role.derive.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

data "aws_iam_policy_document" "derive" {
  statement {
    sid       = "ReadInstances"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/studies/*"]
  }

  statement {
    # Only derivative objects (gateway.derive.derivative_key): never an original instance.
    sid       = "WriteDerivatives"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/studies/*/htj2k-*.j2c"]
  }

  statement {
    sid       = "ConsumeQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.derive.arn]
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.derive_dlq.arn]
  }

  statement {
    sid       = "UseKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com", "sqs.${var.region}.amazonaws.com", "secretsmanager.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid     = "ReadGatewaySecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.signing_keys.arn,
      aws_secretsmanager_secret.api_keys.arn,
      aws_secretsmanager_secret.database_url.arn,
    ]
  }
}

resource "aws_iam_role_policy" "derive" {
  name   = "derive"
  role   = aws_iam_role.derive.id
  policy = data.aws_iam_policy_document.derive.json
}

# The gateway task sends one message per stored instance (gateway.derive.SqsQueue) and nothing else.
data "aws_iam_policy_document" "task_derive" {
  statement {
    sid       = "QueueDerivatives"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.derive.arn]
  }

  statement {
    sid       = "UseQueueKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sqs.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task_derive" {
  name   = "derive-queue"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task_derive.json
}

# Messages in the dead-letter queue are instances served without their derivative (still correct, only slower).
resource "aws_cloudwatch_metric_alarm" "derive_dlq" {
  alarm_name          = "${var.name}-derive-dead-letters"
  alarm_description   = "Derivatives that failed every attempt; those instances are served from their originals."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.derive_dlq.name }
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
