terraform {
  # 1.5: `check` blocks and `terraform_data`; every 1.x after it reads this module unchanged.
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    # 5.x: the split S3 bucket resources, aws_vpc_security_group_*_rule and RDS-managed master passwords; 5.84
    # (at least): the ALB listener's response header attributes (HSTS).
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.84.0, < 6.0.0"
    }
  }
}
