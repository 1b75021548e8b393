################################################################################
# Application load balancer: TLS termination, HTTP/2 to clients, HTTP -> HTTPS redirect
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:ALB access logs record the full request URI, and tokens travel in paths (/t/{token}/) and queries (?token=); ALB cannot redact them. NGINX writes the access log instead, token masked, to CloudWatch (aws_cloudwatch_log_group.nginx).
  #checkov:skip=CKV2_AWS_76:Log4j is covered by AWSManagedRulesKnownBadInputsRuleSet (waf.tf). The check also demands AWSManagedRulesAnonymousIpList, which blocks VPN and cloud-hosting addresses: clinicians on VPNs and portal back ends in the cloud are our legitimate clients.
  name               = var.name
  load_balancer_type = "application"
  internal           = false
  security_groups    = [aws_security_group.alb.id]
  subnets            = var.public_subnet_ids

  enable_http2               = true
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"
  enable_deletion_protection = var.deletion_protection
  # STOW uploads of large whole-slide images stream for minutes; a frame read is milliseconds.
  idle_timeout = 300

  tags = local.tags
}

resource "aws_lb_target_group" "nginx" {
  # Plain HTTP on purpose: TLS ends at the load balancer, and this hop stays inside the VPC, into the task's own
  # security group (NGINX then talks TLS to S3). Re-encrypting would need a certificate in every task.
  name        = "${var.name}-nginx"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # Let in-flight downloads finish when a task is replaced.
  deregistration_delay = 60

  health_check {
    enabled             = true
    path                = "/healthz"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn
  # TLS ends here, so NGINX sees plain HTTP and sends no HSTS: the listener adds it to every answer
  routing_http_response_strict_transport_security_header_value = "max-age=63072000"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.nginx.arn
  }

  tags = local.tags
}

resource "aws_lb_listener" "http_redirect" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  tags = local.tags
}
