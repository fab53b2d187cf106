# Credentials the code reads at run time, by ARN. Terraform creates empty secrets; set the
# values once with `aws secretsmanager put-secret-value` (docs/deploy.md), so they never
# enter the Terraform state.
# The secret string is the bare token:
#   slack  -> Slack bot token, xoxb-...               (notifier: SLACK_SECRET_ARN)
#   notion -> Notion integration token                (notifier: NOTION_SECRET_ARN)
#   openai -> key of the OpenAI-compatible endpoint   (worker: OPENAI_SECRET_ARN)

locals {
  secrets = var.data_plane_only ? {} : {
    slack  = "Slack bot token of the jobledger notifier"
    notion = "Notion integration token of the jobledger notifier"
    openai = "API key of the OpenAI-compatible endpoint used by the jobledger worker"
  }
}

resource "aws_secretsmanager_secret" "this" {
  #checkov:skip=CKV_AWS_149:The AWS managed key (aws/secretsmanager) encrypts the secrets; a customer managed key costs 1 USD/month and is only needed for cross-account access
  #checkov:skip=CKV2_AWS_57:Third-party tokens (Slack, Notion, OpenAI) cannot be rotated by a Lambda rotation function; rotate them by hand and put the new value
  for_each = local.secrets

  name                    = "${local.name}/${each.key}"
  description             = each.value
  recovery_window_in_days = var.secrets_recovery_window_days
}
