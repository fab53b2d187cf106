# Results bucket. Prefixes:
#   results/<job_id>/<attempt>.jsonl   worker output, expires after results_retention_days
#   checkpoints/<job_id>/...           worker checkpoints, expire after checkpoints_retention_days
#   payloads/...                       event payloads over ~300 KB; never expire (events point at them)

locals {
  results_bucket_name = coalesce(var.results_bucket_name, "${local.name}-results-${local.account_id}")
  results_bucket_arn  = "arn:${local.partition}:s3:::${local.results_bucket_name}"
}

resource "aws_s3_bucket" "results" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket; data events can be enabled in CloudTrail when an audit needs them
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; results can be recomputed from the ledger and payloads are covered by versioning
  #checkov:skip=CKV_AWS_145:SSE-KMS would add a KMS request (and cost) per object; SSE-S3 (AES256) encrypts at rest at no cost
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 event notifications; the ledger records every object the system writes
  bucket = local.results_bucket_name
}

resource "aws_s3_bucket_ownership_controls" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "results" {
  bucket                  = aws_s3_bucket.results.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "results" {
  bucket = aws_s3_bucket.results.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "results" {
  bucket = aws_s3_bucket.results.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "results" {
  bucket = aws_s3_bucket.results.id

  rule {
    id     = "expire-old-results"
    status = "Enabled"
    filter {
      prefix = "results/"
    }
    expiration {
      days = var.results_retention_days
    }
  }

  rule {
    id     = "expire-old-checkpoints"
    status = "Enabled"
    filter {
      prefix = "checkpoints/"
    }
    expiration {
      days = var.checkpoints_retention_days
    }
  }

  rule {
    id     = "housekeeping"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.results]
}

data "aws_iam_policy_document" "results_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.results.arn,
      "${aws_s3_bucket.results.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "results" {
  bucket = aws_s3_bucket.results.id
  policy = data.aws_iam_policy_document.results_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.results]
}
