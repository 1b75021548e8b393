################################################################################
# Secrets Manager: signing keys, API keys, database URL
#
# Terraform creates the secrets but never their values, so no key ever sits in Terraform state or plan output.
# Operators put the values (docs/deploy.md, "First deploy" and "Rotate signing keys"); ECS injects them into the
# gateway container at task start, so a new value reaches the service with the next deployment.
################################################################################

resource "aws_secretsmanager_secret" "signing_keys" {
  #checkov:skip=CKV2_AWS_57:Signing keys rotate by a documented overlap procedure (append the new key, roll the service, drop the oldest after DICOMGW_TOKEN_MAX_TTL); a one-step rotation Lambda would invalidate every outstanding token at once.
  name                    = "${var.name}/signing-keys"
  description             = "DICOMGW_SIGNING_KEYS: comma-separated token signing keys, oldest first, newest signs (each 32+ characters)."
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV2_AWS_57:API keys are shared with portal back ends; they rotate by the same overlap procedure (add, migrate clients, remove), which an automatic one-step rotation would break.
  name                    = "${var.name}/api-keys"
  description             = "DICOMGW_API_KEYS: comma-separated API keys of the portal back ends (server to server)."
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:Holds the password of the application's own database role (not the RDS master, whose secret RDS rotates itself); rotated by the documented overlap procedure (docs/deploy.md) so running tasks never hold a dead password.
  name                    = "${var.name}/database-url"
  description             = "DICOMGW_DATABASE_URL: the postgresql URL of the application role (not the master user) with sslmode=require; its form is in docs/deploy.md."
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}
