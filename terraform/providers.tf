locals {
  # Set only by scripts/check-terraform, which applies the data plane to a local moto server.
  local_endpoint = var.aws_endpoint_url != null
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = local.tags
  }

  # Local testing against moto: dummy credentials, no account lookups through the metadata
  # service, path-style S3. All of these are off for a real deployment (aws_endpoint_url = null).
  skip_credentials_validation = local.local_endpoint
  skip_metadata_api_check     = local.local_endpoint
  skip_region_validation      = local.local_endpoint
  s3_use_path_style           = local.local_endpoint

  endpoints {
    dynamodb       = var.aws_endpoint_url
    ec2            = var.aws_endpoint_url
    ecs            = var.aws_endpoint_url
    iam            = var.aws_endpoint_url
    logs           = var.aws_endpoint_url
    s3             = var.aws_endpoint_url
    sqs            = var.aws_endpoint_url
    sts            = var.aws_endpoint_url
    apigateway     = var.aws_endpoint_url
    cloudwatch     = var.aws_endpoint_url
    ecr            = var.aws_endpoint_url
    events         = var.aws_endpoint_url
    lambda         = var.aws_endpoint_url
    secretsmanager = var.aws_endpoint_url
  }
}
