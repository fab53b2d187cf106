# The sweeper runs on a schedule (timeouts, retries due) and on every ECS task that stops
# (lost workers, Spot interruptions). It tells the two apart by the event's detail-type.

locals {
  sweeper_rules = var.data_plane_only ? {} : {
    schedule = {
      description         = "Periodic sweep: attempts past their timeout or heartbeat, retries due"
      schedule_expression = var.sweeper_schedule
      event_pattern       = null
    }
    task-stopped = {
      description         = "Worker tasks of this cluster that stopped (exit, crash, Spot interruption)"
      schedule_expression = null
      event_pattern = jsonencode({
        source        = ["aws.ecs"]
        "detail-type" = ["ECS Task State Change"]
        detail = {
          clusterArn = [aws_ecs_cluster.this.arn]
          lastStatus = ["STOPPED"]
        }
      })
    }
  }
}

resource "aws_cloudwatch_event_rule" "sweeper" {
  for_each = local.sweeper_rules

  name                = "${local.name}-sweeper-${each.key}"
  description         = each.value.description
  schedule_expression = each.value.schedule_expression
  event_pattern       = each.value.event_pattern
}

resource "aws_cloudwatch_event_target" "sweeper" {
  for_each = local.sweeper_rules

  rule = aws_cloudwatch_event_rule.sweeper[each.key].name
  arn  = module.lambda["sweeper"].function_arn

  retry_policy {
    maximum_retry_attempts       = 3
    maximum_event_age_in_seconds = 3600
  }
}

resource "aws_lambda_permission" "sweeper_events" {
  for_each = local.sweeper_rules

  statement_id  = "AllowEventBridge-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = module.lambda["sweeper"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.sweeper[each.key].arn

  depends_on = [module.lambda]
}
