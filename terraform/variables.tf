# ---------------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------------

variable "aws_region" {
  description = "AWS region of the deployment, e.g. eu-west-1."
  type        = string
}

variable "project" {
  description = "Project name, first part of every resource name."
  type        = string
  default     = "jobledger"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project must be 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "environment" {
  description = "Environment name (dev, prod, ...), second part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (Project and Environment are always added)."
  type        = map(string)
  default     = {}
}

variable "data_plane_only" {
  description = "Create only the data plane (DynamoDB, SQS, S3, ECS, IAM, log groups, security group). Lambda functions, API Gateway, EventBridge, ECR and Secrets Manager are skipped. scripts/check-terraform uses it to apply against moto; keep false for a real deployment."
  type        = bool
  default     = false
}

variable "aws_endpoint_url" {
  description = "Endpoint of a local AWS stand-in (moto) for every service, with dummy credentials. For scripts/check-terraform only; null for a real deployment."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Deletion protection of the events table (the ledger). Turn off only to tear a throw-away environment down."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention in days of every CloudWatch log group (Lambda, worker, API access log)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

# ---------------------------------------------------------------------------------------------
# Lambda functions
# ---------------------------------------------------------------------------------------------

variable "lambda_artifacts_dir" {
  description = "Directory holding <function>/bootstrap.zip as built by `cargo lambda build --release --arm64 --output-format zip` (target/lambda). A relative path is relative to this terraform/ directory."
  type        = string
  default     = "../target/lambda"
}

variable "rust_log" {
  description = "RUST_LOG of every function and of the worker (tracing EnvFilter syntax)."
  type        = string
  default     = "info"
}

variable "lambda_settings" {
  description = "Per-function overrides of memory (MB), timeout (s) and reserved concurrency (-1 = unreserved). Keys: api, dispatcher, projector, launcher, notifier, sweeper."
  type = map(object({
    memory_mb            = optional(number)
    timeout_s            = optional(number)
    reserved_concurrency = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for k in keys(var.lambda_settings) : contains(["api", "dispatcher", "projector", "launcher", "notifier", "sweeper"], k)])
    error_message = "lambda_settings keys must be function names: api, dispatcher, projector, launcher, notifier, sweeper."
  }
}

variable "stream_batch_size" {
  description = "Records per invocation of the DynamoDB stream consumers (dispatcher, projector, notifier)."
  type        = number
  default     = 100
}

variable "stream_parallelization_factor" {
  description = "Concurrent batches per stream shard (1-10). Order per job is kept at any value: Lambda keeps records of one partition key (job_id) in order."
  type        = number
  default     = 1

  validation {
    condition     = var.stream_parallelization_factor >= 1 && var.stream_parallelization_factor <= 10
    error_message = "stream_parallelization_factor must be between 1 and 10."
  }
}

variable "stream_maximum_retry_attempts" {
  description = "Retries of a failing stream batch before its records go to the stream-failure DLQ."
  type        = number
  default     = 5
}

variable "launcher_batch_size" {
  description = "Messages per invocation of the launcher (SQS FIFO, at most 10)."
  type        = number
  default     = 10

  validation {
    condition     = var.launcher_batch_size >= 1 && var.launcher_batch_size <= 10
    error_message = "launcher_batch_size must be between 1 and 10 for a FIFO queue."
  }
}

variable "launcher_maximum_concurrency" {
  description = "Maximum concurrent launcher invocations the SQS event source mapping starts (2-1000); bounds the RunTask rate."
  type        = number
  default     = 5

  validation {
    condition     = var.launcher_maximum_concurrency >= 2 && var.launcher_maximum_concurrency <= 1000
    error_message = "launcher_maximum_concurrency must be between 2 and 1000."
  }
}

variable "result_url_ttl_s" {
  description = "Lifetime in seconds of the presigned result URL returned by GET /jobs/{id}/result (api: RESULT_URL_TTL_S)."
  type        = number
  default     = 900
}

variable "heartbeat_timeout_s" {
  description = "Seconds without progress after which the sweeper treats a running attempt as lost (sweeper: HEARTBEAT_TIMEOUT_S)."
  type        = number
  default     = 600
}

variable "sweeper_schedule" {
  description = "EventBridge schedule expression of the sweeper."
  type        = string
  default     = "rate(5 minutes)"
}

# ---------------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------------

variable "jobs_queue_visibility_timeout_s" {
  description = "Visibility timeout of jobs.fifo in seconds; must exceed the launcher's timeout (AWS recommends 6x)."
  type        = number
  default     = 180
}

variable "jobs_queue_max_receive_count" {
  description = "Receives of one jobs.fifo message before it moves to the jobs DLQ. Retry delays use the visibility timeout, so keep it above max_attempts."
  type        = number
  default     = 10
}

variable "dlq_retention_s" {
  description = "How long the DLQs keep a message, in seconds (at most 14 days)."
  type        = number
  default     = 1209600
}

# ---------------------------------------------------------------------------------------------
# API Gateway
# ---------------------------------------------------------------------------------------------

variable "allowed_ips" {
  description = "CIDR blocks allowed to call the API (resource policy). An empty list allows every address; the API key is still required."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.allowed_ips : can(cidrhost(c, 0))])
    error_message = "allowed_ips must be CIDR blocks, e.g. 203.0.113.7/32."
  }
}

variable "api_key_names" {
  description = "One API key is created per name; the key id becomes the actor (api-key:<id>) of the events it causes."
  type        = list(string)
  default     = ["default"]
}

variable "api_stage_name" {
  description = "Name of the API Gateway stage (first path segment of the endpoint)."
  type        = string
  default     = "v1"
}

variable "api_throttle_rate_limit" {
  description = "Usage plan steady-state requests per second, per API key."
  type        = number
  default     = 20
}

variable "api_throttle_burst_limit" {
  description = "Usage plan burst of requests, per API key."
  type        = number
  default     = 40
}

variable "api_quota_per_day" {
  description = "Usage plan requests per day, per API key."
  type        = number
  default     = 10000
}

variable "manage_api_gateway_account" {
  description = "Set the account-wide API Gateway CloudWatch Logs role (needed for access logging). Turn off when another stack of the account and region already manages it."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

variable "results_bucket_name" {
  description = "Name of the S3 results bucket; null derives <project>-<environment>-results-<account id>."
  type        = string
  default     = null
}

variable "results_retention_days" {
  description = "Days after which objects under results/ expire. payloads/ never expires: events refer to it."
  type        = number
  default     = 365
}

variable "checkpoints_retention_days" {
  description = "Days after which worker checkpoints (checkpoints/) expire."
  type        = number
  default     = 30
}

variable "noncurrent_version_retention_days" {
  description = "Days after which overwritten or deleted object versions of the results bucket expire."
  type        = number
  default     = 30
}

# ---------------------------------------------------------------------------------------------
# Worker (ECS Fargate)
# ---------------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the worker tasks; null uses the region's default VPC."
  type        = string
  default     = null
}

variable "worker_subnet_ids" {
  description = "Subnets of the worker tasks; empty uses every subnet of the VPC. They need a route to ECR, S3, DynamoDB and the AI endpoint (NAT gateway or VPC endpoints)."
  type        = list(string)
  default     = []
}

variable "worker_assign_public_ip" {
  description = "Give worker tasks a public IP (launcher WORKER_ASSIGN_PUBLIC_IP). Needed when worker_subnet_ids are public subnets without a NAT gateway, so tasks can pull the image and reach AWS APIs; leave false with private subnets."
  type        = bool
  default     = false
}

variable "worker_cpu" {
  description = "CPU units of one worker task (256, 512, 1024, 2048, 4096, ...)."
  type        = number
  default     = 1024
}

variable "worker_memory_mb" {
  description = "Memory of one worker task in MiB; must fit the CPU size (Fargate task sizes)."
  type        = number
  default     = 2048
}

variable "worker_cpu_architecture" {
  description = "CPU architecture of the worker task: ARM64 (cheaper; Fargate Spot supports it on platform 1.4.0+) or X86_64."
  type        = string
  default     = "ARM64"

  validation {
    condition     = contains(["ARM64", "X86_64"], var.worker_cpu_architecture)
    error_message = "worker_cpu_architecture must be ARM64 or X86_64."
  }
}

variable "worker_image" {
  description = "Full image reference of the worker; null uses the ECR repository of this stack with worker_image_tag."
  type        = string
  default     = null
}

variable "worker_image_tag" {
  description = "Tag of the worker image in the ECR repository (scripts/deploy.sh sets the git commit)."
  type        = string
  default     = "latest"
}

variable "worker_stop_timeout_s" {
  description = "Seconds between SIGTERM and SIGKILL for the worker (at most 120, the Fargate Spot warning)."
  type        = number
  default     = 120

  validation {
    condition     = var.worker_stop_timeout_s >= 2 && var.worker_stop_timeout_s <= 120
    error_message = "worker_stop_timeout_s must be between 2 and 120."
  }
}

variable "container_insights" {
  description = "CloudWatch Container Insights on the ECS cluster (extra CloudWatch metrics cost)."
  type        = bool
  default     = true
}

variable "ecr_keep_images" {
  description = "Number of worker images the ECR lifecycle policy keeps."
  type        = number
  default     = 20
}

variable "ai_backend" {
  description = "AI backend of the worker (AI_BACKEND): builtin (offline heuristics), bedrock or openai."
  type        = string
  default     = "builtin"

  validation {
    condition     = contains(["builtin", "bedrock", "openai"], var.ai_backend)
    error_message = "ai_backend must be builtin, bedrock or openai."
  }
}

variable "bedrock_model_id" {
  description = "Bedrock model id used by the worker (BEDROCK_MODEL_ID), e.g. anthropic.claude-3-haiku-20240307-v1:0."
  type        = string
  default     = "anthropic.claude-3-haiku-20240307-v1:0"
}

variable "bedrock_model_arns" {
  description = "Model or inference-profile ARNs the worker may invoke; empty derives the foundation-model ARN of bedrock_model_id in aws_region. Cross-region inference profiles need the profile ARN and the model ARN of every region they route to."
  type        = list(string)
  default     = []
}

variable "openai_base_url" {
  description = "Base URL of the OpenAI-compatible endpoint (OPENAI_BASE_URL); its key is in the openai secret, injected as OPENAI_API_KEY when ai_backend = openai."
  type        = string
  default     = "https://api.openai.com/v1"
}

variable "openai_model" {
  description = "Model the openai backend calls (OPENAI_MODEL), e.g. gpt-4o-mini."
  type        = string
  default     = "gpt-4o-mini"
}

# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------

variable "slack_channel" {
  description = "Slack channel the notifier posts to (SLACK_CHANNEL); the bot token is in the slack secret."
  type        = string
  default     = ""
}

variable "notion_database_id" {
  description = "Notion database the notifier writes job pages into (NOTION_DATABASE_ID); the integration token is in the notion secret."
  type        = string
  default     = ""
}

variable "secrets_recovery_window_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once)."
  type        = number
  default     = 7
}
