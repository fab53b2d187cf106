# One Rust Lambda function: execution role + least-privilege inline policy + log group + function.
# The zip is built outside Terraform by cargo-lambda; Terraform only uploads it.

locals {
  log_actions = ["logs:CreateLogStream", "logs:PutLogEvents"]
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = var.function_name
  description        = "Execution role of the ${var.function_name} Lambda function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Log groups use the CloudWatch Logs service key; a customer managed KMS key costs 1 USD/month per key and adds nothing for these logs
  #checkov:skip=CKV_AWS_338:Retention is a variable (log_retention_days); a year of Lambda logs is not needed, the audit trail is the events table
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

data "aws_iam_policy_document" "this" {
  statement {
    sid       = "OwnLogGroup"
    actions   = local.log_actions
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.policy_statements
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources

      dynamic "condition" {
        for_each = statement.value.conditions
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "least-privilege"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.this.json
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_117:The functions call only AWS APIs; outside a VPC they need no NAT gateway or VPC endpoints
  #checkov:skip=CKV_AWS_116:Stream and SQS failures go to on-failure destinations and the SQS redrive DLQ; the sweeper is re-run by its schedule, so an async DLQ adds nothing
  #checkov:skip=CKV_AWS_173:The environment holds names and ARNs only, no secrets (those are read from Secrets Manager at run time); the Lambda service key encrypts it at rest
  #checkov:skip=CKV_AWS_272:Code signing needs AWS Signer profiles; the zips are built and uploaded by the same deploy pipeline
  #checkov:skip=CKV_AWS_50:X-Ray is not used; every event carries correlation_id and causation_id and the logs are structured
  count = var.create_function ? 1 : 0

  function_name                  = var.function_name
  description                    = var.description
  role                           = aws_iam_role.this.arn
  runtime                        = "provided.al2023"
  architectures                  = ["arm64"]
  handler                        = "bootstrap"
  filename                       = var.zip_path
  source_code_hash               = filebase64sha256(var.zip_path)
  memory_size                    = var.memory_mb
  timeout                        = var.timeout_s
  reserved_concurrent_executions = var.reserved_concurrency

  environment {
    variables = var.environment
  }

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.this]
}
