# A complete deployment into an existing VPC. Build the upload-hook package first (from the repository root):
#   terraform/scripts/build-lambda.sh build/lambda.zip
# then: terraform init && terraform apply -var-file=my.tfvars   (see docs/deploy.md)

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project = "dicom-gateway"
    }
  }
}

module "dicom_gateway" {
  source = "../../"

  name   = "dicom-gw"
  region = var.region

  vpc_id             = var.vpc_id
  public_subnet_ids  = var.public_subnet_ids
  private_subnet_ids = var.private_subnet_ids

  domain_name     = var.domain_name
  certificate_arn = var.certificate_arn

  gateway_image = var.gateway_image
  nginx_image   = var.nginx_image

  lambda_package = "${path.module}/../../../build/lambda.zip"

  cors_origins    = [var.portal_origin]
  frame_ancestors = ["'self'", var.portal_origin]

  min_capacity = 2
  max_capacity = 6

  tags = {
    environment = "example"
  }
}
