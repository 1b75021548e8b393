variable "region" {
  description = "Region for every resource; pick it for data residency (e.g. eu-central-1 to keep data in Germany)."
  type        = string
  default     = "eu-central-1"
}

variable "vpc_id" {
  description = "Existing VPC to deploy into."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (two or more AZs) for the load balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more AZs) with a NAT gateway or VPC endpoints."
  type        = list(string)
}

variable "domain_name" {
  description = "Public host name of the gateway."
  type        = string
  default     = "dicom.example.org"
}

variable "certificate_arn" {
  description = "ACM certificate ARN for domain_name in var.region."
  type        = string
}

variable "gateway_image" {
  description = "Gateway image URI (docker/gateway.Dockerfile), pinned by digest."
  type        = string
}

variable "nginx_image" {
  description = "NGINX image URI (docker/nginx.Dockerfile), pinned by digest."
  type        = string
}

variable "portal_origin" {
  description = "Origin of the portal that embeds the viewer and calls DICOMweb from the browser."
  type        = string
  default     = "https://portal.example.org"
}
