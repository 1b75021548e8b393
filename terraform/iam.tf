################################################################################
# IAM: least privilege per principal
#   execution role  - pull images, write container logs, read the three secrets (ECS agent, before start)
#   task role       - the gateway: S3 by prefix, the KMS key; nothing else
#   upload hook     - the Lambda: incoming/ in, studies/ or quarantine/ out, its queue, the database URL
################################################################################

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    # Confused-deputy guard: only ECS acting for this account may assume the role.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

################################################################################
# ECS execution role (used by the ECS agent, not by our code)
################################################################################

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution_managed" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid     = "ReadGatewaySecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.signing_keys.arn,
      aws_secretsmanager_secret.api_keys.arn,
      aws_secretsmanager_secret.database_url.arn,
    ]
  }

  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

################################################################################
# Task role: what the gateway's own code may do
################################################################################

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

locals {
  # Reads: studies/ always (NGINX fetches presigned byte ranges signed with these credentials); quarantine/ only
  # for the admin API, and only when it is enabled.
  task_read_prefixes = var.enable_quarantine_admin ? ["studies/*", "quarantine/*"] : ["studies/*"]
  # Deletes: incoming/ (the hook moves direct uploads away), studies/ (DELETE and patient erasure; versioning keeps
  # the previous version for noncurrent_version_expiration_days, no version is deletable) and, for the admin API,
  # quarantine/ (release, delete).
  task_delete_prefixes = var.enable_quarantine_admin ? ["incoming/*", "studies/*", "quarantine/*"] : ["incoming/*", "studies/*"]
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ReadObjects"
    actions   = ["s3:GetObject"]
    resources = [for prefix in local.task_read_prefixes : "${aws_s3_bucket.data.arn}/${prefix}"]
  }

  statement {
    # What the STOW hooks write: accepted instances and thumbnails under studies/, rejected ones under quarantine/.
    sid     = "WriteObjects"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/studies/*",
      "${aws_s3_bucket.data.arn}/quarantine/*",
    ]
  }

  statement {
    sid       = "DeleteObjects"
    actions   = ["s3:DeleteObject"]
    resources = [for prefix in local.task_delete_prefixes : "${aws_s3_bucket.data.arn}/${prefix}"]
  }

  statement {
    # Listing (and HeadBucket for /readyz, which sends no prefix) only within the gateway's prefixes.
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values   = ["studies/*", "quarantine/*", "incoming/*"]
    }
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "objects"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

################################################################################
# Upload-hook Lambda role
################################################################################

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "upload_hook" {
  name               = "${var.name}-upload-hook"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

# Network interfaces in the VPC and writing its own logs (AWS managed, scoped by AWS).
resource "aws_iam_role_policy_attachment" "upload_hook_vpc" {
  role       = aws_iam_role.upload_hook.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# X-Ray segments (the API has no resource-level permissions).
resource "aws_iam_role_policy_attachment" "upload_hook_xray" {
  role       = aws_iam_role.upload_hook.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

data "aws_iam_policy_document" "upload_hook" {
  statement {
    sid       = "TakeDirectUploads"
    actions   = ["s3:GetObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/incoming/*"]
  }

  statement {
    sid     = "WriteHookResults"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/studies/*",
      "${aws_s3_bucket.data.arn}/quarantine/*",
    ]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com", "sqs.${var.region}.amazonaws.com", "secretsmanager.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.upload_hook_dlq.arn]
  }

  statement {
    # The three values Settings.from_env() requires (see the environment in lambda.tf).
    sid     = "ReadGatewaySecrets"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.signing_keys.arn,
      aws_secretsmanager_secret.api_keys.arn,
      aws_secretsmanager_secret.database_url.arn,
    ]
  }
}

resource "aws_iam_role_policy" "upload_hook" {
  name   = "upload-hook"
  role   = aws_iam_role.upload_hook.id
  policy = data.aws_iam_policy_document.upload_hook.json
}

################################################################################
# Retention Lambda (retention.tf): list and delete under studies/ only, its queue, the three secrets
################################################################################

resource "aws_iam_role" "retention" {
  name               = "${var.name}-retention"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "retention_vpc" {
  role       = aws_iam_role.retention.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy_attachment" "retention_xray" {
  role       = aws_iam_role.retention.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

data "aws_iam_policy_document" "retention" {
  statement {
    # Expired instances and everything stored under their names; no s3:DeleteObjectVersion: previous versions
    # expire by the bucket's lifecycle rule (noncurrent_version_expiration_days).
    sid       = "DeleteExpiredObjects"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/studies/*"]
  }

  statement {
    sid       = "ListStudies"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["studies/*"]
    }
  }

  statement {
    sid       = "DecryptSecretsAndQueue"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sqs.${var.region}.amazonaws.com", "secretsmanager.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.retention_dlq.arn]
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

resource "aws_iam_role_policy" "retention" {
  name   = "retention"
  role   = aws_iam_role.retention.id
  policy = data.aws_iam_policy_document.retention.json
}

################################################################################
# RDS enhanced monitoring
################################################################################

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
