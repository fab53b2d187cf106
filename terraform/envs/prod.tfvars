# Production. Apply with scripts/deploy.sh prod.
aws_region  = "eu-west-1"
environment = "prod"

# Replace with the egress addresses of the systems that submit jobs.
allowed_ips   = ["203.0.113.10/32"]
api_key_names = ["ci", "backoffice"]

rust_log            = "info"
log_retention_days  = 90
deletion_protection = true

# Put the workers in private subnets with a NAT gateway or VPC endpoints (ECR, S3, DynamoDB,
# Logs, Bedrock / Secrets Manager), e.g.:
# vpc_id            = "vpc-0123456789abcdef0"
# worker_subnet_ids = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]

worker_cpu              = 1024
worker_memory_mb        = 2048
worker_cpu_architecture = "ARM64"
ai_backend              = "bedrock"
bedrock_model_id        = "anthropic.claude-3-haiku-20240307-v1:0"
container_insights      = true

launcher_maximum_concurrency  = 10
stream_maximum_retry_attempts = 10
api_throttle_rate_limit       = 50
api_throttle_burst_limit      = 100
api_quota_per_day             = 100000
results_retention_days        = 365
checkpoints_retention_days    = 30
heartbeat_timeout_s           = 600

slack_channel      = "#jobledger"
notion_database_id = "00000000000000000000000000000000"
