################################################################################
# Naming, placement and data residency
################################################################################

variable "name" {
  description = "Name prefix of every resource (lower case letters, digits and hyphens; at most 20 characters so bucket names stay within 63)."
  type        = string
  default     = "dicom-gateway"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name must be 2-20 characters of lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region every resource (bucket, database, logs, keys) must live in, for data residency. Must equal the region of the AWS provider passed to this module; a plan against another region stops with an error."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region name, e.g. eu-central-1."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

################################################################################
# Network (bring your own VPC)
################################################################################

variable "vpc_id" {
  description = "ID of the VPC to deploy into."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (at least two availability zones) for the internet-facing load balancer."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "An application load balancer needs subnets in at least two availability zones."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two availability zones, with a NAT gateway or VPC endpoints for S3, ECR, Secrets Manager, CloudWatch Logs and KMS) for the ECS tasks, the database and the upload Lambda."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "The database subnet group needs subnets in at least two availability zones."
  }
}

variable "allowed_ingress_cidrs" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer on ports 80 and 443. Narrow it to the portal's and clinics' networks where you can."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

################################################################################
# Load balancer and public address
################################################################################

variable "domain_name" {
  description = "Public host name of the gateway (e.g. dicom.example.org). Used for DICOMGW_PUBLIC_URL; point a DNS alias at the load balancer output."
  type        = string
}

variable "certificate_arn" {
  description = "ARN of the ACM certificate for domain_name, in the same region, used by the HTTPS listener."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener. The default allows only TLS 1.2 and 1.3 with forward-secret ciphers."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "enable_waf" {
  description = "Attach an AWS WAF web ACL (AWS managed common and known-bad-inputs rule sets, body-size rules counted only so STOW uploads pass) to the load balancer."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the load balancer and the database against deletion. Turn off only to tear down a test environment."
  type        = bool
  default     = true
}

################################################################################
# Containers (ECS Fargate)
################################################################################

variable "gateway_image" {
  description = "Image URI of the gateway (built from docker/gateway.Dockerfile), preferably pinned by digest."
  type        = string
}

variable "nginx_image" {
  description = "Image URI of NGINX (built from docker/nginx.Dockerfile), preferably pinned by digest."
  type        = string
}

variable "task_cpu" {
  description = "Fargate task CPU units (both containers share them): 512, 1024, 2048, 4096..."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Fargate task memory in MiB; must be valid for task_cpu."
  type        = number
  default     = 2048
}

variable "ephemeral_storage_gib" {
  description = "Task ephemeral storage in GiB (21-200): the STOW upload spool and the NGINX plan cache live there."
  type        = number
  default     = 50

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "Fargate ephemeral storage must be between 21 and 200 GiB."
  }
}

variable "gateway_workers" {
  description = "gunicorn worker processes per task (WEB_CONCURRENCY)."
  type        = number
  default     = 3
}

variable "gateway_threads" {
  description = "Threads per gunicorn worker (gthread)."
  type        = number
  default     = 8
}

variable "gateway_environment" {
  description = "Extra non-secret environment variables for the gateway container (e.g. DICOMGW_PHI_POLICY pointing at a policy file in a derived image). Secrets never go here."
  type        = map(string)
  default     = {}
}

variable "token_max_ttl" {
  description = "DICOMGW_TOKEN_MAX_TTL: upper bound, in seconds, on any token's lifetime. Also the wait before an old signing key may be removed."
  type        = number
  default     = 3600
}

variable "audit_retention_days" {
  description = "DICOMGW_AUDIT_RETENTION_DAYS: days the access audit trail keeps a row (the collector sidecar deletes older ones)."
  type        = number
  default     = 365

  validation {
    condition     = var.audit_retention_days >= 1
    error_message = "audit_retention_days must be at least 1."
  }
}

variable "cors_origins" {
  description = "Origins (scheme://host[:port]) allowed to call DICOMweb from a browser, exact match. Empty: no cross-origin access."
  type        = list(string)
  default     = []
}

variable "frame_ancestors" {
  description = "CSP frame-ancestors sources allowed to embed the viewer in an iframe (e.g. [\"'self'\", \"https://portal.example.org\"])."
  type        = list(string)
  default     = ["'self'"]

  # CSP's ancestor-source, by the rules `stack up` and the NGINX image apply (gateway/tools/nginxconf.py): browsers
  # ignore a source list they cannot parse (no portal could frame the viewer), and NGINX writes it into a quoted header
  validation {
    condition = length(var.frame_ancestors) > 0 && alltrue([
      # printable ASCII, as the other checks take it (an IDN host in punycode, as browsers send it)
      for source in var.frame_ancestors : can(regex("^[!-~]+$", source)) && !contains(["self", "none"], lower(source)) && can(regex(
        "^('self'|'none'|[a-z][a-z0-9+.-]*:|([a-z][a-z0-9+.-]*://)?(\\*|(\\*\\.)?[a-z0-9-]+(\\.[a-z0-9-]+)*\\.?)(:([0-9]+|\\*))?(/[a-z0-9._~!&()*+=:@%/-]*)?)$",
        lower(source)
      ))
    ]) && (length(var.frame_ancestors) == 1 || !contains([for source in var.frame_ancestors : lower(source)], "'none'"))
    error_message = "frame_ancestors: one CSP source per entry: 'self' or 'none' (with their single quotes; 'none' alone), a scheme such as https:, or an origin such as https://portal.example.org."
  }
}

variable "desired_count" {
  description = "Number of tasks at creation; autoscaling moves it between min_capacity and max_capacity afterwards."
  type        = number
  default     = 2
}

variable "min_capacity" {
  description = "Fewest running tasks (two or more keeps the service up across an availability-zone failure)."
  type        = number
  default     = 2
}

variable "max_capacity" {
  description = "Most running tasks."
  type        = number
  default     = 10
}

variable "cpu_target_percent" {
  description = "Target average CPU utilisation of the service for autoscaling."
  type        = number
  default     = 60
}

variable "requests_per_target" {
  description = "Target load-balancer requests per task per minute for autoscaling (a viewer fetching frames sends many small requests)."
  type        = number
  default     = 6000
}

################################################################################
# Object storage (S3)
################################################################################

variable "incoming_expiration_days" {
  description = "Days after which an object still under incoming/ (a direct upload the hook could not process, see the dead-letter queue) expires."
  type        = number
  default     = 30
}

variable "quarantine_expiration_days" {
  description = "Days after which a quarantined object (PHI where the policy forbids it) is deleted unless released through the admin API first."
  type        = number
  default     = 90
}

variable "noncurrent_version_expiration_days" {
  description = "Days a previous (overwritten or deleted) object version is kept under studies/: the window in which a deletion can be undone, and the bulk of the erasure window README states."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 90
    error_message = "Keep previous versions 1 to 90 days: a deleted study must not stay readable for longer."
  }
}

variable "access_log_expiration_days" {
  description = "Days S3 server access logs and load-balancer access logs are kept."
  type        = number
  default     = 365
}

variable "enable_quarantine_admin" {
  description = "Let the gateway read, release and delete quarantine/ objects (the admin API). Without it the task role cannot read quarantine/ at all."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Allow Terraform to delete the buckets with objects in them. Keep false anywhere real data lives."
  type        = bool
  default     = false
}

################################################################################
# Catalog (RDS PostgreSQL)
################################################################################

variable "db_instance_class" {
  description = "RDS instance class of the catalog database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Initial database storage in GiB."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage" {
  description = "Upper limit in GiB for storage autoscaling."
  type        = number
  default     = 500
}

variable "db_multi_az" {
  description = "Run the database with a synchronous standby in a second availability zone."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "Keep between 7 and 35 days of backups."
  }
}

variable "db_iam_authentication" {
  description = "Enable IAM database authentication as well as passwords (optional: the gateway itself uses the password in its DATABASE_URL secret)."
  type        = bool
  default     = true
}

variable "db_name" {
  description = "Name of the catalog database."
  type        = string
  default     = "dicomgw"
}

variable "db_username" {
  description = "Master user name; RDS generates its password and keeps it in Secrets Manager, encrypted with the module's key."
  type        = string
  default     = "dicomgw"
}

################################################################################
# Direct-upload hook (S3 event -> Lambda)
################################################################################

variable "lambda_package" {
  description = "Path of the upload-hook zip built from this repository by terraform/scripts/build-lambda.sh (the same gateway package the containers run)."
  type        = string
}

variable "lambda_memory_mb" {
  description = "Memory of the upload-hook Lambda in MB (CPU scales with it)."
  type        = number
  default     = 1024
}

variable "lambda_timeout_seconds" {
  description = "Timeout of one upload-hook invocation; large whole-slide images need minutes."
  type        = number
  default     = 600
}

variable "lambda_ephemeral_storage_mb" {
  description = "Lambda /tmp size in MB; the hook spools each object there while it scans it."
  type        = number
  default     = 4096
}

variable "lambda_reserved_concurrency" {
  description = "Most upload-hook invocations at once (protects the database from a burst of direct uploads)."
  type        = number
  default     = 10
}

################################################################################
# Retention (EventBridge schedule -> Lambda running `dicom-gateway retention run`)
################################################################################

variable "retention_schedule" {
  description = "EventBridge schedule expression of the retention run (the policy file's [retention] section)."
  type        = string
  default     = "rate(1 day)"
}

variable "retention_policy_path" {
  description = "Path of the policy file inside the Lambda package (e.g. /var/task/policy.toml, added to the zip); empty: no policy, nothing expires."
  type        = string
  default     = ""
}

################################################################################
# Logs
################################################################################

variable "log_retention_days" {
  description = "CloudWatch Logs retention in days for every log group of the module."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention period CloudWatch Logs accepts."
  }
}

variable "alarm_topic_arns" {
  description = "SNS topic ARNs notified by the module's alarms (dead-lettered direct uploads). Empty: alarms only show in the console."
  type        = list(string)
  default     = []
}

variable "derive_memory_mb" {
  description = "Memory of the derivative Lambda in MB (CPU scales with it; HTJ2K encoding is CPU-bound)."
  type        = number
  default     = 2048
}

variable "derive_timeout_seconds" {
  description = "Timeout of one derivative invocation (a batch of up to 5 instances)."
  type        = number
  default     = 300
}

variable "derive_reserved_concurrency" {
  description = "Most derivative invocations at once (each holds one catalog connection)."
  type        = number
  default     = 10
}

variable "derive_max_receives" {
  description = "Attempts per instance before its message goes to the derivative dead-letter queue."
  type        = number
  default     = 3
}
