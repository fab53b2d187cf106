# Development: small, cheap, easy to tear down. Apply with scripts/deploy.sh dev.
aws_region  = "eu-west-1"
environment = "dev"

# Replace with your office / VPN egress addresses. TEST-NET placeholder: nobody can call the API yet.
allowed_ips   = ["203.0.113.0/24"]
api_key_names = ["dev"]

rust_log            = "info,jobledger=debug"
log_retention_days  = 14
deletion_protection = false # dev ledgers are throw-away; prod keeps the default (true)

# Worker: smallest useful Fargate size, Graviton, builtin AI (no model cost).
worker_cpu              = 512
worker_memory_mb        = 1024
worker_cpu_architecture = "ARM64"
# The default VPC has public subnets only: without a public IP a task cannot pull its image.
worker_assign_public_ip = true
ai_backend              = "builtin"
container_insights      = false

launcher_maximum_concurrency = 2
api_quota_per_day            = 2000
results_retention_days       = 30
checkpoints_retention_days   = 7
secrets_recovery_window_days = 0

slack_channel      = ""
notion_database_id = ""
