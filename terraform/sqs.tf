# jobs.fifo carries one message per queued attempt (MessageGroupId = job_id,
# MessageDeduplicationId = event_id). Its DLQ must be FIFO too.

resource "aws_sqs_queue" "jobs_dlq" {
  name                      = "${local.name}-jobs-dlq.fifo"
  fifo_queue                = true
  message_retention_seconds = var.dlq_retention_s
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "jobs" {
  name                        = "${local.name}-jobs.fifo"
  fifo_queue                  = true
  content_based_deduplication = false
  deduplication_scope         = "messageGroup"
  fifo_throughput_limit       = "perMessageGroupId"
  visibility_timeout_seconds  = var.jobs_queue_visibility_timeout_s
  message_retention_seconds   = 345600
  sqs_managed_sse_enabled     = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn
    maxReceiveCount     = var.jobs_queue_max_receive_count
  })

  lifecycle {
    precondition {
      condition     = var.jobs_queue_visibility_timeout_s > local.lambda_settings["launcher"].timeout_s
      error_message = "jobs_queue_visibility_timeout_s must exceed the launcher's timeout, or a message becomes visible again while it is being launched."
    }
  }
}

# On-failure destination of the three stream consumers: a record that failed
# stream_maximum_retry_attempts times is described here (shard, sequence numbers), for operators.
resource "aws_sqs_queue" "stream_dlq" {
  name                      = "${local.name}-stream-failures"
  message_retention_seconds = var.dlq_retention_s
  sqs_managed_sse_enabled   = true
}
