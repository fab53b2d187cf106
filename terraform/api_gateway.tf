# REST API: every path and method goes to the api function (one axum Router). API Gateway
# checks the API key and the caller's IP before the function runs.

locals {
  api_enabled = var.data_plane_only ? 0 : 1
}

resource "aws_api_gateway_rest_api" "this" {
  #checkov:skip=CKV_AWS_237:The API has no custom domain or dependent stage outside this file; replacing it in place is fine
  count = local.api_enabled

  name           = local.name
  description    = "jobledger HTTP API"
  api_key_source = "HEADER"

  endpoint_configuration {
    types = ["REGIONAL"]
  }
}

data "aws_iam_policy_document" "api" {
  count = local.api_enabled

  statement {
    sid       = "Invoke"
    actions   = ["execute-api:Invoke"]
    resources = ["${aws_api_gateway_rest_api.this[0].execution_arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  dynamic "statement" {
    for_each = length(var.allowed_ips) > 0 ? [1] : []
    content {
      sid       = "AllowListedIpsOnly"
      effect    = "Deny"
      actions   = ["execute-api:Invoke"]
      resources = ["${aws_api_gateway_rest_api.this[0].execution_arn}/*"]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
      condition {
        test     = "NotIpAddress"
        variable = "aws:SourceIp"
        values   = var.allowed_ips
      }
    }
  }
}

resource "aws_api_gateway_rest_api_policy" "this" {
  count = local.api_enabled

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  policy      = data.aws_iam_policy_document.api[0].json
}

resource "aws_api_gateway_resource" "proxy" {
  count = local.api_enabled

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  parent_id   = aws_api_gateway_rest_api.this[0].root_resource_id
  path_part   = "{proxy+}"
}

locals {
  # "/" and "/{proxy+}", both ANY -> api function.
  api_routes = var.data_plane_only ? {} : {
    root  = aws_api_gateway_rest_api.this[0].root_resource_id
    proxy = aws_api_gateway_resource.proxy[0].id
  }
}

resource "aws_api_gateway_method" "any" {
  #checkov:skip=CKV2_AWS_53:Request validation is done by the api function (typed JSON, 400/422 with a JSON error); a proxy method has no model to validate against
  for_each = local.api_routes

  rest_api_id      = aws_api_gateway_rest_api.this[0].id
  resource_id      = each.value
  http_method      = "ANY"
  authorization    = "NONE"
  api_key_required = true
}

resource "aws_api_gateway_integration" "any" {
  for_each = local.api_routes

  rest_api_id             = aws_api_gateway_rest_api.this[0].id
  resource_id             = each.value
  http_method             = aws_api_gateway_method.any[each.key].http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = module.lambda["api"].invoke_arn
}

resource "aws_lambda_permission" "api" {
  count = local.api_enabled

  statement_id  = "AllowApiGateway"
  action        = "lambda:InvokeFunction"
  function_name = module.lambda["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_api_gateway_rest_api.this[0].execution_arn}/*/*"

  depends_on = [module.lambda]
}

resource "aws_api_gateway_deployment" "this" {
  count = local.api_enabled

  rest_api_id = aws_api_gateway_rest_api.this[0].id

  # A resource policy or route change only takes effect in a new deployment.
  triggers = {
    redeploy = sha1(jsonencode([
      aws_api_gateway_resource.proxy[0].id,
      aws_api_gateway_method.any,
      aws_api_gateway_integration.any,
      aws_api_gateway_rest_api_policy.this[0].policy,
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "api_access" {
  #checkov:skip=CKV_AWS_158:Log groups use the CloudWatch Logs service key; a customer managed KMS key costs 1 USD/month per key and adds nothing for these logs
  #checkov:skip=CKV_AWS_338:Retention is a variable (log_retention_days); the audit trail is the events table, not the access log
  count = local.api_enabled

  name              = "/aws/apigateway/${local.name}-access"
  retention_in_days = var.log_retention_days
}

resource "aws_api_gateway_stage" "this" {
  #checkov:skip=CKV_AWS_120:Responses are per job and change while it runs; caching them would serve stale status
  #checkov:skip=CKV_AWS_73:X-Ray is not used; requests carry correlation ids into the events and the logs
  #checkov:skip=CKV2_AWS_29:WAF costs at least 5 USD/month per web ACL; the IP allow-list, API keys and the usage plan guard the API
  #checkov:skip=CKV2_AWS_51:Client certificates authenticate API Gateway to an HTTP backend; the backend here is a Lambda invoked with IAM
  count = local.api_enabled

  rest_api_id   = aws_api_gateway_rest_api.this[0].id
  deployment_id = aws_api_gateway_deployment.this[0].id
  stage_name    = var.api_stage_name

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access[0].arn
    format = jsonencode({
      requestId      = "$context.requestId"
      ip             = "$context.identity.sourceIp"
      apiKeyId       = "$context.identity.apiKeyId"
      requestTime    = "$context.requestTime"
      httpMethod     = "$context.httpMethod"
      path           = "$context.path"
      status         = "$context.status"
      responseLength = "$context.responseLength"
      latencyMs      = "$context.responseLatency"
      integrationMs  = "$context.integrationLatency"
      error          = "$context.error.message"
    })
  }

  depends_on = [aws_api_gateway_account.this]
}

resource "aws_api_gateway_method_settings" "all" {
  #checkov:skip=CKV_AWS_225:Responses are per job and change while it runs; caching them would serve stale status
  count = local.api_enabled

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  stage_name  = aws_api_gateway_stage.this[0].stage_name
  method_path = "*/*"

  settings {
    metrics_enabled        = true
    logging_level          = "ERROR"
    data_trace_enabled     = false
    caching_enabled        = false
    throttling_rate_limit  = var.api_throttle_rate_limit * max(length(var.api_key_names), 1)
    throttling_burst_limit = var.api_throttle_burst_limit * max(length(var.api_key_names), 1)
  }
}

# ---- API keys and usage plan ------------------------------------------------------------------

resource "aws_api_gateway_api_key" "this" {
  for_each = var.data_plane_only ? toset([]) : toset(var.api_key_names)

  name    = "${local.name}-${each.key}"
  enabled = true
}

resource "aws_api_gateway_usage_plan" "this" {
  count = local.api_enabled

  name = local.name

  api_stages {
    api_id = aws_api_gateway_rest_api.this[0].id
    stage  = aws_api_gateway_stage.this[0].stage_name
  }

  throttle_settings {
    rate_limit  = var.api_throttle_rate_limit
    burst_limit = var.api_throttle_burst_limit
  }

  quota_settings {
    limit  = var.api_quota_per_day
    period = "DAY"
  }
}

resource "aws_api_gateway_usage_plan_key" "this" {
  for_each = aws_api_gateway_api_key.this

  key_id        = each.value.id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this[0].id
}

# ---- account-wide CloudWatch role (access and execution logging need it) ----------------------

data "aws_iam_policy_document" "apigateway_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigateway_cloudwatch" {
  count = var.manage_api_gateway_account && !var.data_plane_only ? 1 : 0

  name               = "${local.name}-apigateway-cloudwatch"
  description        = "Lets API Gateway write access and execution logs of this account and region"
  assume_role_policy = data.aws_iam_policy_document.apigateway_assume.json
}

resource "aws_iam_role_policy_attachment" "apigateway_cloudwatch" {
  count = length(aws_iam_role.apigateway_cloudwatch)

  role       = aws_iam_role.apigateway_cloudwatch[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count = length(aws_iam_role.apigateway_cloudwatch)

  cloudwatch_role_arn = aws_iam_role.apigateway_cloudwatch[0].arn

  depends_on = [aws_iam_role_policy_attachment.apigateway_cloudwatch]
}
