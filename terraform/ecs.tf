################################################################################
# ECS Fargate: one task = NGINX (port 8080, behind the ALB) + gateway (gunicorn on 127.0.0.1:8000)
#
# Both containers share the task's network namespace, so NGINX reaches the gateway on loopback, the same shape
# as `dicom-gateway stack up`. Root filesystems are read-only; the few paths that must be written are task
# volumes on the task's ephemeral storage.
################################################################################

locals {
  # path-style, the host the gateway presigns for (gateway/storage/s3.py): S3 checks the Host in the signature,
  # and on a bucket's own host (BUCKET.s3...) it reads the presigned /BUCKET/key as the key "BUCKET/key"
  s3_host = "s3.${var.region}.amazonaws.com"

  # Every ${DICOMGW_*} variable of nginx/templates/ (tests/unit/test_deploy.py checks the two lists agree).
  nginx_environment = {
    DICOMGW_LISTEN             = "8080"
    DICOMGW_LISTEN_OPTIONS     = "default_server"
    DICOMGW_TLS_CONF           = "conf.d/snippets/dgw-tls-off.conf"
    DICOMGW_TLS_CERT           = "/etc/nginx/tls/cert.pem"
    DICOMGW_TLS_KEY            = "/etc/nginx/tls/key.pem"
    DICOMGW_ACCESS_LOG         = "/var/log/dgw/access.log" # a task volume the audit collector reads
    DICOMGW_CACHE_DIR          = "/var/cache/nginx"
    DICOMGW_VIEWER_ROOT        = "/usr/share/dicomgw/viewer"
    DICOMGW_AUTH_CACHE_SECONDS = "2"
    DICOMGW_MAX_BODY           = "4g"
    DICOMGW_MAX_UPLOADS        = tostring(max(1, floor(var.gateway_threads / 2))) # half of one worker's threads
    DICOMGW_GATEWAY_UPSTREAM   = "127.0.0.1:8000"
    DICOMGW_STORAGE_SCHEME     = "https"
    DICOMGW_STORAGE_UPSTREAM   = "${local.s3_host}:443"
    DICOMGW_STORAGE_HOST       = local.s3_host
    DICOMGW_FILE_ORIGIN_LISTEN = "127.0.0.1:8081"
    DICOMGW_FILE_ROOT          = "/usr/share/dicomgw/empty"
    DICOMGW_CORS_ORIGIN_REGEX  = local.cors_origin_regex
    DICOMGW_FRAME_ANCESTORS    = join(" ", var.frame_ancestors)
  }

  gateway_environment = merge({
    DICOMGW_MODE          = "production"
    DICOMGW_STORAGE_URL   = "s3://${local.data_bucket_name}"
    DICOMGW_PUBLIC_URL    = local.public_url
    DICOMGW_TLS           = "1"
    DICOMGW_CORS_ORIGINS  = join(",", var.cors_origins)
    DICOMGW_TOKEN_MAX_TTL = tostring(var.token_max_ttl)
    AWS_REGION            = var.region
    AWS_DEFAULT_REGION    = var.region # the one botocore reads: presigned URLs are signed for this region
    GUNICORN_BIND         = "127.0.0.1:8000"
    WEB_CONCURRENCY       = tostring(var.gateway_workers)
    GUNICORN_THREADS      = tostring(var.gateway_threads)
    # derivative jobs go to SQS (derive.tf), consumed by the derive Lambda
    DICOMGW_DERIVE_QUEUE_URL = aws_sqs_queue.derive.url
  }, var.gateway_environment)

  gateway_secrets = {
    DICOMGW_SIGNING_KEYS = aws_secretsmanager_secret.signing_keys.arn
    DICOMGW_API_KEYS     = aws_secretsmanager_secret.api_keys.arn
    DICOMGW_DATABASE_URL = aws_secretsmanager_secret.database_url.arn
  }

  container_definitions = [
    {
      name                   = "gateway"
      image                  = var.gateway_image
      essential              = true
      user                   = "10001:10001"
      privileged             = false
      readonlyRootFilesystem = true
      environment            = [for key in sort(keys(local.gateway_environment)) : { name = key, value = local.gateway_environment[key] }]
      secrets                = [for key in sort(keys(local.gateway_secrets)) : { name = key, valueFrom = local.gateway_secrets[key] }]
      mountPoints = [
        { sourceVolume = "gateway-data", containerPath = "/var/lib/dicomgw", readOnly = false },
      ]
      healthCheck = {
        command     = ["CMD", "python", "/usr/local/lib/dicomgw/healthcheck.py", "http://127.0.0.1:8000/healthz"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 30
      }
      stopTimeout = 60
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.gateway.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "gateway"
        }
      }
    },
    {
      name                   = "nginx"
      image                  = var.nginx_image
      essential              = true
      privileged             = false
      readonlyRootFilesystem = true
      portMappings           = [{ containerPort = 8080, protocol = "tcp" }]
      environment            = [for key in sort(keys(local.nginx_environment)) : { name = key, value = local.nginx_environment[key] }]
      mountPoints = [
        # envsubst writes the rendered template here at start
        { sourceVolume = "nginx-conf", containerPath = "/etc/nginx/conf.d", readOnly = false },
        # temp files and the auth/plan caches (DICOMGW_CACHE_DIR)
        { sourceVolume = "nginx-cache", containerPath = "/var/cache/nginx", readOnly = false },
        { sourceVolume = "nginx-run", containerPath = "/run", readOnly = false },
        { sourceVolume = "nginx-tmp", containerPath = "/tmp", readOnly = false },
        { sourceVolume = "nginx-logs", containerPath = "/var/log/dgw", readOnly = false },
      ]
      # Start NGINX only once the gateway answers, so the ALB never sees a task that can only 503.
      dependsOn = [{ containerName = "gateway", condition = "HEALTHY" }]
      healthCheck = {
        command     = ["CMD", "curl", "--fail", "--silent", "--output", "/dev/null", "--max-time", "3", "http://127.0.0.1:8080/healthz"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      ulimits = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.nginx.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "nginx"
        }
      }
    },
    {
      # The access audit trail: this task's NGINX log into the catalog (RDS), rows past the retention deleted;
      # each line is copied to stdout, so CloudWatch keeps the access log as before.
      name                   = "audit-collector"
      image                  = var.gateway_image
      essential              = true
      user                   = "10001:10001"
      privileged             = false
      readonlyRootFilesystem = true
      command                = ["dicom-gateway", "audit", "collect", "--follow", "--echo", "--heartbeat", "/var/lib/dicomgw/collector.alive"]
      environment = [
        { name = "DICOMGW_ACCESS_LOG", value = local.nginx_environment.DICOMGW_ACCESS_LOG },
        { name = "DICOMGW_AUDIT_RETENTION_DAYS", value = tostring(var.audit_retention_days) },
      ]
      secrets = [{ name = "DICOMGW_DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn }]
      mountPoints = [
        { sourceVolume = "nginx-logs", containerPath = "/var/log/dgw", readOnly = true },
        # uid 10001's folder (as in the gateway container): the heartbeat file
        { sourceVolume = "gateway-data", containerPath = "/var/lib/dicomgw", readOnly = false },
      ]
      dependsOn = [{ containerName = "gateway", condition = "HEALTHY" }]
      # healthy while its passes succeed (each touches the heartbeat file)
      healthCheck = {
        command     = ["CMD", "python", "-c", "import os, sys, time; sys.exit(time.time() - os.path.getmtime('/var/lib/dicomgw/collector.alive') > 60)"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 30
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.nginx.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "access"
        }
      }
    },
  ]
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.this.arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.ecs_exec.name
      }
    }
  }

  tags = local.tags
}

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.container_definitions)

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  volume {
    name = "gateway-data"
  }

  volume {
    name = "nginx-conf"
  }

  volume {
    name = "nginx-cache"
  }

  volume {
    name = "nginx-run"
  }

  volume {
    name = "nginx-tmp"
  }

  volume {
    name = "nginx-logs"
  }

  tags = local.tags
}

resource "aws_ecs_service" "this" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.this.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  enable_execute_command            = false
  health_check_grace_period_seconds = 60
  # Rolling deployments without downtime (a key rotation is such a deployment): new tasks first, old ones after.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.nginx.arn
    container_name   = "nginx"
    container_port   = 8080
  }

  tags = local.tags

  lifecycle {
    # Autoscaling owns the count after creation.
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution, aws_iam_role_policy_attachment.execution_managed]
}

################################################################################
# Autoscaling: CPU and ALB requests per task
################################################################################

resource "aws_appautoscaling_target" "ecs" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.ecs.service_namespace
  resource_id        = aws_appautoscaling_target.ecs.resource_id
  scalable_dimension = aws_appautoscaling_target.ecs.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  name               = "${var.name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.ecs.service_namespace
  resource_id        = aws_appautoscaling_target.ecs.resource_id
  scalable_dimension = aws_appautoscaling_target.ecs.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.nginx.arn_suffix}"
    }
  }
}
