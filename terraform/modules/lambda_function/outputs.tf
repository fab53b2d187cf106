output "function_name" {
  description = "Name of the function (also when it was not created)."
  value       = var.function_name
}

output "function_arn" {
  description = "ARN of the function, null when create_function is false."
  value       = try(aws_lambda_function.this[0].arn, null)
}

output "invoke_arn" {
  description = "Invoke ARN of the function (for API Gateway), null when create_function is false."
  value       = try(aws_lambda_function.this[0].invoke_arn, null)
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the function's execution role."
  value       = aws_iam_role.this.name
}

output "log_group_name" {
  description = "Name of the function's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.name
}

output "policy_actions" {
  description = "Every IAM action granted to the function's role, sorted."
  value       = sort(distinct(concat(local.log_actions, flatten([for s in var.policy_statements : s.actions]))))
}
