# The ledger and the tables derived from it. Key schemas are part of the code contract (docs/deploy.md).

resource "aws_dynamodb_table" "events" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed key (aws/dynamodb); a customer managed key adds 1 USD/month and key administration without a reader that needs it
  name                        = "${local.name}-events"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "job_id"
  range_key                   = "version"
  stream_enabled              = true
  stream_view_type            = "NEW_IMAGE"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "job_id"
    type = "S"
  }

  attribute {
    name = "version"
    type = "N"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

resource "aws_dynamodb_table" "idempotency" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed key (aws/dynamodb); see the events table
  name         = "${local.name}-idempotency"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "key"

  attribute {
    name = "key"
    type = "S"
  }

  # Items carry expires_at (epoch seconds, now + 24 h); DynamoDB deletes them after that.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed key (aws/dynamodb); see the events table
  name         = "${local.name}-jobs"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "job_id"

  attribute {
    name = "job_id"
    type = "S"
  }

  attribute {
    name = "status"
    type = "S"
  }

  attribute {
    name = "updated_at"
    type = "S"
  }

  global_secondary_index {
    name            = "status-updated_at"
    hash_key        = "status"
    range_key       = "updated_at"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

resource "aws_dynamodb_table" "notifier_state" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed key (aws/dynamodb); see the events table
  name         = "${local.name}-notifier-state"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "job_id"
  range_key    = "sink"

  attribute {
    name = "job_id"
    type = "S"
  }

  # "slack" or "notion"; the item holds last_version sent (and the sink's message or page id).
  attribute {
    name = "sink"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}
