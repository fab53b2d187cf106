# Remote state. Terraform keeps state in a local file until a backend is configured here.
# For a shared deployment, create the bucket and the lock table once (by hand or from a
# bootstrap configuration), uncomment the block and run `terraform init -migrate-state`.
# scripts/deploy.sh passes `-backend-config=envs/<env>.backend.hcl` when that file exists, so
# one block serves every environment:
#
# terraform {
#   backend "s3" {
#     bucket         = "my-org-terraform-state"        # versioned, encrypted, public access blocked
#     key            = "jobledger/terraform.tfstate"   # overridden per environment by envs/<env>.backend.hcl
#     region         = "eu-west-1"
#     dynamodb_table = "terraform-locks"               # pk "LockID" (S), PAY_PER_REQUEST
#     encrypt        = true
#   }
# }
#
# envs/prod.backend.hcl would then hold, for example:
#   key = "jobledger/prod/terraform.tfstate"
