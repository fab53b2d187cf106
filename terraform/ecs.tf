# The worker: one Fargate (Spot) task per job attempt, started by the launcher with
# container overrides JOB_ID and ATTEMPT.

locals {
  worker_container_name = "worker"
  worker_family         = "${local.name}-worker"

  worker_task_definition_family_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.worker_family}:*"
  worker_task_arn_pattern           = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"

  ecr_repository_name = "${local.name}-worker"
  worker_image = coalesce(
    var.worker_image,
    "${local.account_id}.dkr.ecr.${local.region}.amazonaws.com/${local.ecr_repository_name}:${var.worker_image_tag}",
  )

  bedrock_model_arns = length(var.bedrock_model_arns) > 0 ? var.bedrock_model_arns : [
    "arn:${local.partition}:bedrock:${local.region}::foundation-model/${var.bedrock_model_id}",
  ]

  # The names WorkerEnv::from_lookup reads (workers/src/config.rs); EVENTS_TABLE selects the
  # DynamoDB ledger and S3 objects over local files.
  worker_env = {
    RUST_LOG         = var.rust_log
    EVENTS_TABLE     = aws_dynamodb_table.events.name
    RESULTS_BUCKET   = aws_s3_bucket.results.bucket
    AI_BACKEND       = var.ai_backend
    BEDROCK_MODEL_ID = var.bedrock_model_id
    OPENAI_BASE_URL  = var.openai_base_url
    OPENAI_MODEL     = var.openai_model
  }

  # Variables ECS fills from Secrets Manager (the execution role reads them at task start): the
  # worker never fetches secrets itself. Only with the openai backend, since ECS refuses to start
  # a task whose secret has no value yet.
  worker_secret_env = {
    OPENAI_API_KEY = local.secret_arns["openai"]
  }
  worker_secrets = var.ai_backend == "openai" ? [
    for k in sort(keys(local.worker_secret_env)) : { name = k, valueFrom = local.worker_secret_env[k] }
  ] : []

  worker_policy = [
    {
      # A leading-key condition (dynamodb:LeadingKeys = JOB_ID) is impossible here: JOB_ID is a
      # container override chosen per task at run time, while the task role is shared by every
      # task of the family and ECS cannot tag its session per task. The worker is therefore allowed
      # the events table, and the hash chain plus the conditional append keep its writes honest.
      sid       = "JobEvents"
      actions   = ["dynamodb:Query", "dynamodb:PutItem"]
      resources = [local.events_arn]
    },
    {
      sid     = "ResultsCheckpointsPayloads"
      actions = ["s3:PutObject", "s3:GetObject"]
      resources = [
        "${aws_s3_bucket.results.arn}/results/*",
        "${aws_s3_bucket.results.arn}/checkpoints/*",
        "${aws_s3_bucket.results.arn}/payloads/*",
      ]
    },
    {
      # The Converse API is authorized as bedrock:InvokeModel.
      sid       = "InvokeConfiguredModels"
      actions   = ["bedrock:InvokeModel"]
      resources = local.bedrock_model_arns
    },
  ]
}

resource "aws_ecs_cluster" "this" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE_SPOT", "FARGATE"]

  # RunTask without a strategy lands on Spot; the launcher asks for FARGATE explicitly when a
  # job must not be interrupted (the event records which capacity ran it).
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE_SPOT"
    weight            = 1
    base              = 0
  }
}

resource "aws_cloudwatch_log_group" "worker" {
  #checkov:skip=CKV_AWS_158:Log groups use the CloudWatch Logs service key; a customer managed KMS key costs 1 USD/month per key and adds nothing for these logs
  #checkov:skip=CKV_AWS_338:Retention is a variable (log_retention_days); the audit trail is the events table, not the logs
  name              = "/ecs/${local.worker_family}"
  retention_in_days = var.log_retention_days
}

# ---- roles ----------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Used by ECS itself: pull the image, write the awslogs stream.
resource "aws_iam_role" "worker_execution" {
  name               = "${local.worker_family}-execution"
  description        = "ECS task execution role of the jobledger worker (image pull, logs, secrets)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "worker_execution" {
  statement {
    sid = "EcrAuth"
    # GetAuthorizationToken has no resource-level permissions; "*" is the only resource it accepts.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "PullWorkerImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = ["arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${local.ecr_repository_name}"]
  }
  statement {
    sid       = "WorkerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker.arn}:*"]
  }
  dynamic "statement" {
    for_each = length(local.worker_secrets) > 0 ? [1] : []
    content {
      sid       = "InjectWorkerSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [for s in local.worker_secrets : s.valueFrom]
    }
  }
}

resource "aws_iam_role_policy" "worker_execution" {
  name   = "least-privilege"
  role   = aws_iam_role.worker_execution.id
  policy = data.aws_iam_policy_document.worker_execution.json
}

# Used by the worker's code.
resource "aws_iam_role" "worker_task" {
  name               = "${local.worker_family}-task"
  description        = "Task role of the jobledger worker: its job's events, the results bucket, the AI backend"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "worker_task" {
  dynamic "statement" {
    for_each = local.worker_policy
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }
}

resource "aws_iam_role_policy" "worker_task" {
  name   = "least-privilege"
  role   = aws_iam_role.worker_task.id
  policy = data.aws_iam_policy_document.worker_task.json
}

# ---- network --------------------------------------------------------------------------------

resource "aws_security_group" "worker" {
  #checkov:skip=CKV2_AWS_5:Attached at run time: the launcher passes it to RunTask (WORKER_SECURITY_GROUPS)
  name        = local.worker_family
  description = "jobledger worker tasks: no inbound traffic, HTTPS out to AWS APIs and the AI endpoint"
  vpc_id      = data.aws_vpc.selected.id

  egress {
    description = "HTTPS to AWS APIs, ECR and the OpenAI-compatible endpoint"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# ---- task definition ------------------------------------------------------------------------

resource "aws_ecs_task_definition" "worker" {
  family                   = local.worker_family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.worker_cpu)
  memory                   = tostring(var.worker_memory_mb)
  execution_role_arn       = aws_iam_role.worker_execution.arn
  task_role_arn            = aws_iam_role.worker_task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.worker_cpu_architecture
  }

  # The root filesystem is read-only; the worker may write scratch files under /tmp only.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name                   = local.worker_container_name
      image                  = local.worker_image
      essential              = true
      memory                 = var.worker_memory_mb
      user                   = "10001:10001"
      readonlyRootFilesystem = true
      privileged             = false
      stopTimeout            = var.worker_stop_timeout_s
      environment            = [for k in sort(keys(local.worker_env)) : { name = k, value = local.worker_env[k] }]
      secrets                = local.worker_secrets
      mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
      linuxParameters        = { initProcessEnabled = true }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.worker.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "worker"
        }
      }
    }
  ])
}
