################################################################################
# Catalog: RDS PostgreSQL, private, encrypted, TLS-only, backed up
################################################################################

resource "aws_db_subnet_group" "this" {
  name        = var.name
  description = "dicom-gateway catalog: private subnets"
  subnet_ids  = var.private_subnet_ids
  tags        = local.tags
}

resource "aws_db_parameter_group" "this" {
  name        = "${var.name}-postgres${var.db_engine_version}"
  family      = "postgres${var.db_engine_version}"
  description = "dicom-gateway catalog: TLS only, query logging without parameter values"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Query logging: schema changes and slow statements. Statements use bound parameters; their values (patient
  # names in a QIDO filter) are kept out of the log by log_parameter_max_length(_on_error) = 0.
  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_parameter_max_length"
    value = "0"
  }

  parameter {
    name  = "log_parameter_max_length_on_error"
    value = "0"
  }

  # An error's DETAIL line quotes the values it is about ("Failing row contains (..., Doe^Jane, ...)" for a CHECK
  # constraint, "Key (...)=(...)" for a unique one): the file's patient's name and ID. terse leaves DETAIL, HINT,
  # QUERY and CONTEXT out of the server log; the error line and the statement (placeholders only) stay.
  parameter {
    name  = "log_error_verbosity"
    value = "terse"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

# RDS creates these on first export without retention or encryption; creating them first fixes both.
resource "aws_cloudwatch_log_group" "rds" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_db_instance" "this" {
  identifier     = var.name
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this.arn

  db_name  = var.db_name
  username = var.db_username
  # RDS generates the master password and keeps it in Secrets Manager (rotated by RDS): never in Terraform state.
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = aws_kms_key.this.key_id
  iam_database_authentication_enabled = var.db_iam_authentication

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.db_backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade      = true
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]
  monitoring_interval             = 60
  monitoring_role_arn             = aws_iam_role.rds_monitoring.arn

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.this.arn
  performance_insights_retention_period = 7

  tags = local.tags

  depends_on = [aws_cloudwatch_log_group.rds]
}
