# The six Rust Lambda functions. Their environment variables and IAM actions are the contract
# with the code: handlers/src/aws/contract.rs lists per binary the actions its calls need, and
# handlers/tests/terraform_contract.rs checks this file against it and against the code.

locals {
  lambda_defaults = {
    api        = { memory_mb = 512, timeout_s = 29, reserved_concurrency = -1, description = "HTTP API: commands and queries (axum router)" }
    dispatcher = { memory_mb = 256, timeout_s = 60, reserved_concurrency = -1, description = "Events stream -> jobs.fifo" }
    projector  = { memory_mb = 256, timeout_s = 60, reserved_concurrency = -1, description = "Events stream -> jobs read model" }
    launcher   = { memory_mb = 256, timeout_s = 30, reserved_concurrency = -1, description = "jobs.fifo -> ECS RunTask (Fargate Spot)" }
    notifier   = { memory_mb = 256, timeout_s = 60, reserved_concurrency = -1, description = "Events stream -> Slack and Notion" }
    sweeper    = { memory_mb = 256, timeout_s = 120, reserved_concurrency = -1, description = "Timeouts and lost workers (schedule + ECS task-state events)" }
  }

  lambda_settings = {
    for name, d in local.lambda_defaults : name => {
      description          = d.description
      memory_mb            = coalesce(try(var.lambda_settings[name].memory_mb, null), d.memory_mb)
      timeout_s            = coalesce(try(var.lambda_settings[name].timeout_s, null), d.timeout_s)
      reserved_concurrency = coalesce(try(var.lambda_settings[name].reserved_concurrency, null), d.reserved_concurrency)
    }
  }

  lambda_artifacts_dir = startswith(var.lambda_artifacts_dir, "/") ? var.lambda_artifacts_dir : "${path.root}/${var.lambda_artifacts_dir}"

  # ---- ARNs the policies are scoped to ------------------------------------------------------
  events_arn        = aws_dynamodb_table.events.arn
  events_stream_arn = aws_dynamodb_table.events.stream_arn
  jobs_arn          = aws_dynamodb_table.jobs.arn
  jobs_index_arn    = "${aws_dynamodb_table.jobs.arn}/index/*"

  # Secret ARNs end in a random suffix; without the secrets (data-plane-only apply) use the name pattern.
  secret_arns = {
    for s in ["slack", "notion", "openai"] : s => try(
      aws_secretsmanager_secret.this[s].arn,
      "arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:${local.name}/${s}-??????"
    )
  }

  # ---- environment: the names each binary's typed config reads (handlers/src/aws/config.rs) ---
  common_env = {
    RUST_LOG     = var.rust_log
    EVENTS_TABLE = aws_dynamodb_table.events.name
  }

  lambda_env = {
    api = merge(local.common_env, {
      JOBS_TABLE        = aws_dynamodb_table.jobs.name
      IDEMPOTENCY_TABLE = aws_dynamodb_table.idempotency.name
      RESULTS_BUCKET    = aws_s3_bucket.results.bucket
      RESULT_URL_TTL_S  = tostring(var.result_url_ttl_s)
    })
    dispatcher = merge(local.common_env, {
      JOBS_QUEUE_URL = aws_sqs_queue.jobs.url
    })
    projector = merge(local.common_env, {
      JOBS_TABLE = aws_dynamodb_table.jobs.name
    })
    launcher = merge(local.common_env, {
      ECS_CLUSTER             = aws_ecs_cluster.this.name
      WORKER_TASK_DEFINITION  = aws_ecs_task_definition.worker.arn
      WORKER_CONTAINER_NAME   = local.worker_container_name
      WORKER_SUBNETS          = join(",", local.worker_subnet_ids)
      WORKER_SECURITY_GROUPS  = aws_security_group.worker.id
      WORKER_ASSIGN_PUBLIC_IP = var.worker_assign_public_ip ? "ENABLED" : "DISABLED"
      JOBS_QUEUE_URL          = aws_sqs_queue.jobs.url
    })
    notifier = merge(local.common_env, {
      NOTIFIER_STATE_TABLE = aws_dynamodb_table.notifier_state.name
      RESULTS_BUCKET       = aws_s3_bucket.results.bucket
      SLACK_SECRET_ARN     = local.secret_arns["slack"]
      NOTION_SECRET_ARN    = local.secret_arns["notion"]
      NOTION_DATABASE_ID   = var.notion_database_id
      SLACK_CHANNEL        = var.slack_channel
    })
    sweeper = merge(local.common_env, {
      JOBS_TABLE          = aws_dynamodb_table.jobs.name
      HEARTBEAT_TIMEOUT_S = tostring(var.heartbeat_timeout_s)
    })
  }

  # ---- IAM: exactly the actions of aws::contract, each scoped --------------------------------
  # Lambda reads the stream with the function's role (event source mapping) and writes the
  # on-failure record to the stream DLQ with it too.
  stream_consumer = [
    {
      sid       = "ReadEventsStream"
      actions   = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"]
      resources = [local.events_stream_arn]
    },
    {
      sid       = "StreamFailuresToDlq"
      actions   = ["sqs:SendMessage"]
      resources = [aws_sqs_queue.stream_dlq.arn]
    },
  ]

  # Appending = TransactWriteItems of Puts with attribute_not_exists(version). TransactWriteItems
  # is no IAM action of its own: IAM authorizes each Put of a transaction as dynamodb:PutItem.
  append_events = {
    sid       = "AppendEvents"
    actions   = ["dynamodb:Query", "dynamodb:PutItem"]
    resources = [local.events_arn]
  }

  # Loading a job's events follows payloads offloaded to S3 (events over ~300 KB keep an s3://
  # URI): every function that loads events may read them, and only them.
  read_payloads = {
    sid       = "ReadOffloadedPayloads"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/payloads/*"]
  }

  lambda_policies = {
    api = [
      {
        sid       = "EventsAndIdempotency"
        actions   = ["dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem"]
        resources = [local.events_arn, aws_dynamodb_table.idempotency.arn]
      },
      {
        sid       = "ReadJobsView"
        actions   = ["dynamodb:GetItem", "dynamodb:Query"]
        resources = [local.jobs_arn, local.jobs_index_arn]
      },
      {
        sid     = "ResultsAndPayloads"
        actions = ["s3:GetObject", "s3:PutObject"]
        resources = [
          "${aws_s3_bucket.results.arn}/results/*",
          "${aws_s3_bucket.results.arn}/payloads/*",
        ]
      },
    ]

    dispatcher = concat(local.stream_consumer, [
      local.append_events,
      local.read_payloads,
      {
        sid       = "EnqueueJobs"
        actions   = ["sqs:SendMessage"]
        resources = [aws_sqs_queue.jobs.arn]
      },
    ])

    projector = concat(local.stream_consumer, [
      {
        sid       = "LoadEvents"
        actions   = ["dynamodb:Query"]
        resources = [local.events_arn]
      },
      local.read_payloads,
      {
        sid       = "WriteJobsView"
        actions   = ["dynamodb:UpdateItem", "dynamodb:GetItem"]
        resources = [local.jobs_arn]
      },
    ])

    launcher = [
      {
        sid       = "ConsumeJobsQueue"
        actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
        resources = [aws_sqs_queue.jobs.arn]
      },
      {
        sid       = "RunWorkerTask"
        actions   = ["ecs:RunTask"]
        resources = [local.worker_task_definition_family_arn]
        conditions = [{
          test     = "ArnEquals"
          variable = "ecs:cluster"
          values   = [aws_ecs_cluster.this.arn]
        }]
      },
      {
        sid       = "TagWorkerTask"
        actions   = ["ecs:TagResource"]
        resources = [local.worker_task_arn_pattern]
        conditions = [{
          test     = "StringEquals"
          variable = "ecs:CreateAction"
          values   = ["RunTask"]
        }]
      },
      {
        sid       = "PassWorkerRoles"
        actions   = ["iam:PassRole"]
        resources = [aws_iam_role.worker_task.arn, aws_iam_role.worker_execution.arn]
        conditions = [{
          test     = "StringEquals"
          variable = "iam:PassedToService"
          values   = ["ecs-tasks.amazonaws.com"]
        }]
      },
      local.append_events,
      local.read_payloads,
    ]

    notifier = concat(local.stream_consumer, [
      {
        sid       = "LoadEvents"
        actions   = ["dynamodb:Query"]
        resources = [local.events_arn]
      },
      {
        # Offloaded payloads, and the results the Slack message links to (HeadObject + presign).
        sid       = "ReadPayloadsAndResults"
        actions   = ["s3:GetObject"]
        resources = ["${aws_s3_bucket.results.arn}/payloads/*", "${aws_s3_bucket.results.arn}/results/*"]
      },
      {
        sid       = "NotifierCheckpoints"
        actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
        resources = [aws_dynamodb_table.notifier_state.arn]
      },
      {
        sid       = "ReadNotifierSecrets"
        actions   = ["secretsmanager:GetSecretValue"]
        resources = [local.secret_arns["slack"], local.secret_arns["notion"]]
      },
    ])

    sweeper = [
      {
        sid       = "FindStaleJobs"
        actions   = ["dynamodb:Query"]
        resources = [local.jobs_index_arn]
      },
      local.append_events,
      local.read_payloads,
    ]
  }
}

module "lambda" {
  source   = "./modules/lambda_function"
  for_each = local.lambda_settings

  function_name        = "${local.name}-${each.key}"
  description          = each.value.description
  create_function      = !var.data_plane_only
  zip_path             = "${local.lambda_artifacts_dir}/${each.key}/bootstrap.zip"
  environment          = local.lambda_env[each.key]
  policy_statements    = local.lambda_policies[each.key]
  memory_mb            = each.value.memory_mb
  timeout_s            = each.value.timeout_s
  reserved_concurrency = each.value.reserved_concurrency
  log_retention_days   = var.log_retention_days
  tags                 = local.tags
}

# ---- event source mappings ------------------------------------------------------------------

resource "aws_lambda_event_source_mapping" "events_stream" {
  for_each = var.data_plane_only ? toset([]) : toset(["dispatcher", "projector", "notifier"])

  function_name                      = module.lambda[each.key].function_arn
  event_source_arn                   = local.events_stream_arn
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = var.stream_batch_size
  maximum_batching_window_in_seconds = 0
  parallelization_factor             = var.stream_parallelization_factor
  bisect_batch_on_function_error     = true
  maximum_retry_attempts             = var.stream_maximum_retry_attempts
  maximum_record_age_in_seconds      = -1
  function_response_types            = ["ReportBatchItemFailures"]

  # Events are appended, never updated or deleted: only INSERT records reach the functions.
  filter_criteria {
    filter {
      pattern = jsonencode({ eventName = ["INSERT"] })
    }
  }

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.stream_dlq.arn
    }
  }
}

resource "aws_lambda_event_source_mapping" "jobs_queue" {
  count = local.control_plane

  function_name           = module.lambda["launcher"].function_arn
  event_source_arn        = aws_sqs_queue.jobs.arn
  batch_size              = var.launcher_batch_size
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.launcher_maximum_concurrency
  }
}
