output "url" {
  description = "Public base URL of the gateway."
  value       = module.dicom_gateway.url
}

output "alb_dns_name" {
  description = "Point the domain's alias record here."
  value       = module.dicom_gateway.alb_dns_name
}

output "bucket_name" {
  description = "Data bucket."
  value       = module.dicom_gateway.bucket_name
}

output "secrets" {
  description = "Secrets to fill before the first deployment (docs/deploy.md)."
  value = {
    signing_keys = module.dicom_gateway.signing_keys_secret_arn
    api_keys     = module.dicom_gateway.api_keys_secret_arn
    database_url = module.dicom_gateway.database_url_secret_arn
    db_master    = module.dicom_gateway.db_master_user_secret_arn
  }
}
