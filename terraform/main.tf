# jobledger on AWS. One file per concern:
#   dynamodb.tf     events (the ledger), idempotency, jobs read model, notifier state
#   sqs.tf          jobs.fifo + its DLQ, the stream-failure DLQ
#   s3.tf           results bucket (results/, checkpoints/, payloads/)
#   lambda.tf       the six Rust functions, their environment and IAM, event source mappings
#   api_gateway.tf  REST API -> api function, API keys, usage plan, IP allow-list, access log
#   ecs.tf          cluster (FARGATE_SPOT + FARGATE), worker task definition, roles, security group
#   ecr.tf          worker image repository
#   eventbridge.tf  sweeper schedule and ECS task-state-change rule
#   secrets.tf      Slack, Notion and OpenAI-compatible credentials
# The names, environment variables and IAM actions the Rust code relies on are checked against
# the code by handlers/tests/terraform_contract.rs (see docs/deploy.md, "The contract").

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

data "aws_vpc" "selected" {
  id      = var.vpc_id
  default = var.vpc_id == null ? true : null
}

data "aws_subnets" "vpc" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.selected.id]
  }
}

locals {
  name       = "${var.project}-${var.environment}"
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # 1 when the control plane (Lambda, API Gateway, EventBridge, ECR, Secrets Manager) is created.
  control_plane = var.data_plane_only ? 0 : 1

  tags = merge(var.tags, {
    Project     = var.project
    Environment = var.environment
    ManagedBy   = "terraform"
  })

  worker_subnet_ids = length(var.worker_subnet_ids) > 0 ? var.worker_subnet_ids : sort(data.aws_subnets.vpc.ids)
}
