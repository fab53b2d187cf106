# Names an operator, scripts/monitor.sh and the AWS end-to-end test need. The data-plane
# outputs exist in every mode; the control-plane ones are null when data_plane_only = true.

output "region" {
  description = "AWS region of the deployment."
  value       = local.region
}

output "name_prefix" {
  description = "Prefix of every resource name (<project>-<environment>)."
  value       = local.name
}

output "events_table_name" {
  description = "DynamoDB events table (the ledger): pk job_id (S), sk version (N)."
  value       = aws_dynamodb_table.events.name
}

output "events_stream_arn" {
  description = "Stream (NEW_IMAGE) of the events table."
  value       = aws_dynamodb_table.events.stream_arn
}

output "idempotency_table_name" {
  description = "DynamoDB idempotency table: pk key (S), TTL attribute expires_at."
  value       = aws_dynamodb_table.idempotency.name
}

output "jobs_table_name" {
  description = "DynamoDB jobs read model: pk job_id (S)."
  value       = aws_dynamodb_table.jobs.name
}

output "jobs_status_index_name" {
  description = "GSI of the jobs table: pk status (S), sk updated_at (S)."
  value       = "status-updated_at"
}

output "notifier_state_table_name" {
  description = "DynamoDB notifier checkpoints: pk job_id (S), sk sink (S)."
  value       = aws_dynamodb_table.notifier_state.name
}

output "jobs_queue_url" {
  description = "URL of the jobs.fifo queue."
  value       = aws_sqs_queue.jobs.url
}

output "jobs_queue_name" {
  description = "Name of the jobs.fifo queue."
  value       = aws_sqs_queue.jobs.name
}

output "jobs_dlq_url" {
  description = "URL of the jobs DLQ (FIFO): messages received jobs_queue_max_receive_count times."
  value       = aws_sqs_queue.jobs_dlq.url
}

output "stream_dlq_url" {
  description = "URL of the stream-failure DLQ: on-failure records of dispatcher, projector and notifier."
  value       = aws_sqs_queue.stream_dlq.url
}

output "results_bucket_name" {
  description = "S3 bucket for results/, checkpoints/ and payloads/."
  value       = aws_s3_bucket.results.bucket
}

output "ecs_cluster_name" {
  description = "ECS cluster of the worker tasks."
  value       = aws_ecs_cluster.this.name
}

output "ecs_cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "worker_task_definition_arn" {
  description = "Worker task definition (with revision)."
  value       = aws_ecs_task_definition.worker.arn
}

output "worker_container_name" {
  description = "Name of the worker container (target of the JOB_ID/ATTEMPT overrides)."
  value       = local.worker_container_name
}

output "worker_subnet_ids" {
  description = "Subnets the launcher starts workers in."
  value       = local.worker_subnet_ids
}

output "worker_security_group_id" {
  description = "Security group of the worker tasks."
  value       = aws_security_group.worker.id
}

output "worker_log_group_name" {
  description = "CloudWatch log group of the worker tasks."
  value       = aws_cloudwatch_log_group.worker.name
}

output "worker_task_role_arn" {
  description = "Role the worker code runs with."
  value       = aws_iam_role.worker_task.arn
}

output "worker_execution_role_arn" {
  description = "Role ECS uses to pull the image and write logs."
  value       = aws_iam_role.worker_execution.arn
}

output "worker_environment" {
  description = "Environment of the worker container (JOB_ID and ATTEMPT come as overrides)."
  value       = local.worker_env
}

output "worker_iam_actions" {
  description = "IAM actions of the worker task role, sorted (held to the code by handlers/tests/terraform_contract.rs)."
  value       = sort(distinct(flatten([for s in local.worker_policy : s.actions])))
}

output "lambda_function_names" {
  description = "Lambda function name per function key (the functions exist only when data_plane_only = false)."
  value       = { for k, m in module.lambda : k => m.function_name }
}

output "lambda_log_group_names" {
  description = "CloudWatch log group per Lambda function."
  value       = { for k, m in module.lambda : k => m.log_group_name }
}

output "lambda_role_arns" {
  description = "Execution role per Lambda function."
  value       = { for k, m in module.lambda : k => m.role_arn }
}

output "lambda_environments" {
  description = "Environment variables per Lambda function, as deployed (handlers/tests/terraform_contract.rs checks the names)."
  value       = local.lambda_env
}

output "lambda_iam_actions" {
  description = "IAM actions per Lambda function role, sorted (held to the code by handlers/tests/terraform_contract.rs)."
  value       = { for k, m in module.lambda : k => m.policy_actions }
}

output "secret_arns" {
  description = "Secrets Manager ARNs (slack, notion, openai); name patterns when data_plane_only = true."
  value       = local.secret_arns
}

output "ecr_repository_url" {
  description = "ECR repository of the worker image; null when data_plane_only = true."
  value       = try(aws_ecr_repository.worker[0].repository_url, null)
}

output "api_endpoint" {
  description = "Base URL of the HTTP API (stage included); null when data_plane_only = true."
  value       = try(aws_api_gateway_stage.this[0].invoke_url, null)
}

output "api_key_ids" {
  description = "API key id per key name. Read a key's value with: aws apigateway get-api-key --api-key <id> --include-value --query value --output text"
  value       = { for k, v in aws_api_gateway_api_key.this : k => v.id }
}
