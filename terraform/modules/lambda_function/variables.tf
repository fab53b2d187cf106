variable "function_name" {
  description = "Full name of the Lambda function (also names its role and log group)."
  type        = string
}

variable "description" {
  description = "What the function does, shown in the Lambda console."
  type        = string
  default     = ""
}

variable "create_function" {
  description = "Create the Lambda function itself. When false only the role, its policy and the log group are created (the data-plane-only apply used by scripts/check-terraform)."
  type        = bool
  default     = true
}

variable "zip_path" {
  description = "Path of the bootstrap.zip built by `cargo lambda build --release --arm64 --output-format zip`."
  type        = string
}

variable "environment" {
  description = "Environment variables of the function (the names its binary reads; see handlers/src/aws/contract.rs)."
  type        = map(string)
}

variable "policy_statements" {
  description = "IAM statements of the function's role, on top of writing to its own log group. Every statement names its actions and scoped resources."
  type = list(object({
    sid       = string
    actions   = list(string)
    resources = list(string)
    conditions = optional(list(object({
      test     = string
      variable = string
      values   = list(string)
    })), [])
  }))
}

variable "memory_mb" {
  description = "Memory of the function in MB (CPU scales with it)."
  type        = number
  default     = 256
}

variable "timeout_s" {
  description = "Timeout of one invocation in seconds."
  type        = number
  default     = 30
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions; -1 leaves the function unreserved."
  type        = number
  default     = -1
}

variable "log_retention_days" {
  description = "Retention of the function's CloudWatch log group in days."
  type        = number
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
