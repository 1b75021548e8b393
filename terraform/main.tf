# dicom-gateway on AWS: S3 (objects), ECS Fargate behind an ALB (NGINX + gateway in one task), RDS PostgreSQL
# (catalog), Secrets Manager (keys), and the S3-event Lambda that runs the upload hooks on direct uploads.
# One customer-managed KMS key encrypts everything that accepts one. Resources are split by concern into s3.tf,
# network.tf, alb.tf, ecs.tf, iam.tf, secrets.tf, rds.tf, lambda.tf and waf.tf; this file holds what they share.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  tags = merge({ "app" = "dicom-gateway", "managed-by" = "terraform" }, var.tags)

  # Account and region in the names: bucket names are global, and the region in the name shows where data lives.
  data_bucket_name = "${var.name}-data-${local.account_id}-${var.region}"
  logs_bucket_name = "${var.name}-logs-${local.account_id}-${var.region}"

  public_url = "https://${var.domain_name}"

  # NGINX echoes only these origins (a map regex, the same form gateway/tools/nginxconf.py builds for the local stack);
  # "^$" matches no origin a browser sends. Dots and an app scheme's plus are escaped (the NGINX image refuses a regex
  # with either bare); scheme, host and port hold no other metacharacter.
  cors_origin_regex = length(var.cors_origins) == 0 ? "^$" : "^(${join("|", [for origin in var.cors_origins : replace(replace(origin, ".", "\\."), "+", "\\+")])})$"
}

################################################################################
# KMS: one customer-managed key, rotated yearly
################################################################################

resource "aws_kms_key" "this" {
  description             = "${var.name}: DICOM objects, logs, secrets, database, queues"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags

  lifecycle {
    # Data residency: every resource follows the provider's region, so a provider in the wrong region would put
    # data in the wrong place. Stop the plan instead.
    precondition {
      condition     = local.region == var.region
      error_message = "The AWS provider's region does not match var.region; refusing to create resources outside the chosen data-residency region."
    }
  }
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's resource "*" means this key only; account-root administration is the AWS default key policy and lets IAM policies (the roles in iam.tf) delegate narrower use.
  #checkov:skip=CKV_AWS_111:Same key policy: "*" is the key itself, and write access is confined to the account root and the CloudWatch Logs service for this account's log groups.
  #checkov:skip=CKV_AWS_356:Same key policy: in a key policy "*" can only ever refer to the key it is attached to.
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsForThisAccount"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}

################################################################################
# CloudWatch log groups (retention, encrypted with the key)
################################################################################

resource "aws_cloudwatch_log_group" "nginx" {
  name              = "/${var.name}/nginx"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "gateway" {
  name              = "/${var.name}/gateway"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "ecs_exec" {
  name              = "/${var.name}/ecs-exec"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "retention" {
  name              = "/aws/lambda/${var.name}-retention"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "upload_hook" {
  # The name Lambda writes to; created here so retention and encryption apply from the first invocation.
  name              = "/aws/lambda/${var.name}-upload-hook"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}
