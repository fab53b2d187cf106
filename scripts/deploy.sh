#!/usr/bin/env bash
# Deploy jobledger to AWS: build the Lambda zips (cargo-lambda) and the worker image, push the
# image to ECR, apply Terraform with terraform/envs/ENV.tfvars, print the API endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=(api dispatcher projector launcher notifier sweeper)

usage() {
  cat <<'EOF'
Usage: scripts/deploy.sh [options] ENV

Deploy jobledger to the AWS account of your current credentials (AWS_PROFILE, ...).
ENV names terraform/envs/ENV.tfvars (dev, prod); terraform/envs/ENV.backend.hcl, if present,
is passed to `terraform init -backend-config`.

Steps:
  1. cargo lambda build --release --arm64 --output-format zip   -> target/lambda/<fn>/bootstrap.zip
  2. terraform init, then apply of the ECR repository alone (the image needs somewhere to go)
  3. docker build (workers/Dockerfile) for the worker's CPU architecture, docker push to ECR
     (skipped when the tag is already there: tags are immutable)
  4. terraform apply of everything with -var worker_image_tag=TAG
  5. print the API endpoint and how to read the API keys

Options:
  --dry-run        print the commands instead of running them (nothing is built or changed)
  --skip-build     reuse the zips already in the artifacts directory
  --skip-image     do not build or push the worker image (the tag must already be in ECR)
  --image-tag TAG  worker image tag (default: the git commit, plus -dirty-<time> if the tree is dirty)
  --auto-approve   do not ask before terraform apply
  -h, --help       show this help

Environment:
  CARGO_TARGET_DIR  where cargo builds (the zips are in $CARGO_TARGET_DIR/lambda); default target/
EOF
}

DRY_RUN=0
SKIP_BUILD=0
SKIP_IMAGE=0
AUTO_APPROVE=()
IMAGE_TAG=""
ENV_NAME=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --skip-image) SKIP_IMAGE=1 ;;
    --image-tag)
      [[ $# -ge 2 ]] || { echo "deploy.sh: --image-tag needs a value" >&2; exit 2; }
      IMAGE_TAG="$2"
      shift
      ;;
    --auto-approve) AUTO_APPROVE=(-auto-approve) ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      [[ -z "$ENV_NAME" ]] || { echo "deploy.sh: one environment only" >&2; exit 2; }
      ENV_NAME="$1"
      ;;
  esac
  shift
done
[[ -n "$ENV_NAME" ]] || { echo "deploy.sh: which environment? (dev, prod)" >&2; usage >&2; exit 2; }

TFVARS="envs/$ENV_NAME.tfvars"
[[ -f "terraform/$TFVARS" ]] || { echo "deploy.sh: terraform/$TFVARS does not exist" >&2; exit 2; }
BACKEND_ARGS=()
[[ -f "terraform/envs/$ENV_NAME.backend.hcl" ]] && BACKEND_ARGS=("-backend-config=envs/$ENV_NAME.backend.hcl")

ARTIFACTS="$(cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd || echo "$PWD/${CARGO_TARGET_DIR:-target}")/lambda"

# Values from the tfvars file (simple `key = "value"` lines).
tfvar() { # name default
  local v
  v=$(sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"?([^\"#]*)\"?.*/\1/p" "terraform/$TFVARS" | head -1 | sed 's/[[:space:]]*$//')
  echo "${v:-$2}"
}
REGION="$(tfvar aws_region "${AWS_REGION:-}")"
ARCH="$(tfvar worker_cpu_architecture ARM64)"
case "$ARCH" in ARM64) PLATFORM=linux/arm64 ;; X86_64) PLATFORM=linux/amd64 ;; *) echo "deploy.sh: unknown architecture $ARCH" >&2; exit 2 ;; esac

if [[ -z "$IMAGE_TAG" ]]; then
  IMAGE_TAG="$(git rev-parse --short=12 HEAD 2>/dev/null || echo manual)"
  if [[ -n "$(git status --porcelain 2>/dev/null || true)" ]]; then
    IMAGE_TAG="$IMAGE_TAG-dirty-$(date -u +%Y%m%d%H%M%S)"
  fi
fi

# ---- helpers ----------------------------------------------------------------------------------
say() { printf '\n==> %s\n' "$*"; }
# Run a command, or print it (shell-quoted, prefixed with "+ ") in dry-run mode.
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
# A pipeline given as one string: printed in dry-run mode, run with bash otherwise.
run_sh() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '+ %s\n' "$1"
  else
    bash -c "set -euo pipefail; $1"
  fi
}
tf() { run terraform -chdir=terraform "$@"; }
# A Terraform output; a placeholder in dry-run mode (nothing was applied).
tf_output() {
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "<$1>"
  else
    terraform -chdir=terraform output -raw "$1"
  fi
}
need() {
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $DRY_RUN -eq 1 ]]; then
      echo "# note: not installed here: ${missing[*]}"
    else
      echo "deploy.sh: missing tools: ${missing[*]} (see docs/deploy.md, Prerequisites)" >&2
      exit 1
    fi
  fi
}

need terraform aws
[[ $SKIP_BUILD -eq 1 ]] || need cargo cargo-lambda
[[ $SKIP_IMAGE -eq 1 ]] || need docker
[[ $DRY_RUN -eq 1 ]] && echo "# dry run: commands are printed, not run"
echo "# environment $ENV_NAME (terraform/$TFVARS), region ${REGION:-<from AWS config>}, worker image tag $IMAGE_TAG ($PLATFORM)"

# ---- 1. Lambda zips -----------------------------------------------------------------------------
if [[ $SKIP_BUILD -eq 0 ]]; then
  say "1/5 build the Lambda functions (arm64 zips)"
  # The binaries need the `aws` feature; no debug info and stripped symbols keep the zips small.
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    run cargo lambda build --release --arm64 --output-format zip --package jobledger-handlers --features aws
else
  say "1/5 reuse the Lambda zips in $ARTIFACTS"
fi
if [[ $DRY_RUN -eq 0 ]]; then
  for fn in "${FUNCTIONS[@]}"; do
    [[ -f "$ARTIFACTS/$fn/bootstrap.zip" ]] || {
      echo "deploy.sh: $ARTIFACTS/$fn/bootstrap.zip is missing (is there a binary named $fn?)" >&2
      exit 1
    }
  done
fi

# ---- 2. Terraform init + ECR repository ---------------------------------------------------------
TF_VARS=(-var-file="$TFVARS" -var "worker_image_tag=$IMAGE_TAG" -var "lambda_artifacts_dir=$ARTIFACTS")
say "2/5 terraform init and the ECR repository"
tf init -input=false "${BACKEND_ARGS[@]}"
tf apply -input=false "${AUTO_APPROVE[@]}" "${TF_VARS[@]}" -target=aws_ecr_repository.worker -target=aws_ecr_lifecycle_policy.worker

# ---- 3. worker image ----------------------------------------------------------------------------
if [[ $SKIP_IMAGE -eq 0 ]]; then
  say "3/5 build and push the worker image"
  REPO_URL="$(tf_output ecr_repository_url)"
  REGISTRY="${REPO_URL%%/*}"
  REPO_NAME="${REPO_URL#*/}"
  if [[ $DRY_RUN -eq 0 ]] && aws ecr describe-images --region "$REGION" --repository-name "$REPO_NAME" \
    --image-ids "imageTag=$IMAGE_TAG" >/dev/null 2>&1; then
    echo "$REPO_URL:$IMAGE_TAG is already in ECR (tags are immutable): not rebuilt"
  else
    run_sh "aws ecr get-login-password --region $(printf %q "$REGION") | docker login --username AWS --password-stdin $(printf %q "$REGISTRY")"
    run docker build --platform "$PLATFORM" -f workers/Dockerfile -t "$REPO_URL:$IMAGE_TAG" .
    run docker push "$REPO_URL:$IMAGE_TAG"
  fi
else
  say "3/5 skip the worker image (using tag $IMAGE_TAG)"
fi

# ---- 4. everything ------------------------------------------------------------------------------
say "4/5 terraform apply"
tf apply -input=false "${AUTO_APPROVE[@]}" "${TF_VARS[@]}"

# ---- 5. how to call it --------------------------------------------------------------------------
say "5/5 endpoint and API keys"
ENDPOINT="$(tf_output api_endpoint)"
echo "API endpoint: $ENDPOINT"
if [[ $DRY_RUN -eq 1 ]]; then
  KEYS="<name> <id>"
else
  KEYS="$(terraform -chdir=terraform output -json api_key_ids | python3 -c 'import json,sys; [print(k, v) for k, v in json.load(sys.stdin).items()]')"
fi
echo "Read an API key (send it as the x-api-key header):"
while read -r name id; do
  [[ -n "$name" ]] || continue
  printf '  %s: ' "$name"
  printf '%q ' aws apigateway get-api-key --region "$REGION" --api-key "$id" --include-value --query value --output text
  printf '\n'
done <<<"$KEYS"
echo "Try it:  curl -H \"x-api-key: \$KEY\" $ENDPOINT/health"
echo "Secrets are created empty; set them once (the value is the bare token):"
for s in slack notion openai; do
  printf '  aws secretsmanager put-secret-value --region %s --secret-id %s --secret-string "$TOKEN"\n' \
    "$REGION" "$(if [[ $DRY_RUN -eq 1 ]]; then echo "<secret_arns.$s>"; else terraform -chdir=terraform output -json secret_arns | python3 -c "import json,sys; print(json.load(sys.stdin)['$s'])"; fi)"
done
