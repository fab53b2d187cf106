#!/usr/bin/env bash
# Watch a jobledger deployment: running worker tasks, jobs by status (read model), DLQ depths,
# live logs. Resource names come from `terraform output -json` (terraform/ or --outputs FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

STATUSES=(SUBMITTED QUEUED LAUNCHING RUNNING RETRY_WAIT CANCELLING SUCCEEDED FAILED CANCELLED)
LOG_TARGETS="api dispatcher projector launcher notifier sweeper worker"

usage() {
  cat <<EOF
Usage: scripts/monitor.sh [options] [COMMAND [ARG]]

Commands:
  status             (default) tasks, jobs per status and DLQ depths
  tasks              running worker tasks: task, status, capacity (Spot or not), job, started
  jobs [STATUS]      jobs per status from the jobs read model (GSI status-updated_at);
                     with STATUS, the 20 most recently updated jobs in it
  dlq                depth of jobs.fifo, the jobs DLQ and the stream-failure DLQ
  logs NAME          follow the logs of NAME: one of $LOG_TARGETS
  watch [SECONDS]    repeat status every SECONDS (default 10) until Ctrl-C

Options:
  --outputs FILE     read resource names from FILE (\`terraform output -json\`) instead of
                     running terraform output in terraform/
  --since DURATION   how far back logs start (default 10m)
  --dry-run          print the AWS CLI commands instead of running them
  -h, --help         show this help

AWS credentials and region come from the usual AWS CLI configuration; the region defaults to
the deployment's (terraform output region).
EOF
}

DRY_RUN=0
OUTPUTS_FILE=""
SINCE=10m
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --outputs)
      [[ $# -ge 2 ]] || { echo "monitor.sh: --outputs needs a file" >&2; exit 2; }
      OUTPUTS_FILE="$2"
      shift
      ;;
    --since)
      [[ $# -ge 2 ]] || { echo "monitor.sh: --since needs a duration" >&2; exit 2; }
      SINCE="$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "monitor.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
COMMAND="${ARGS[0]:-status}"
ARG="${ARGS[1]:-}"

# ---- resource names -----------------------------------------------------------------------------
OUTPUTS_JSON=""
if [[ -n "$OUTPUTS_FILE" ]]; then
  OUTPUTS_JSON="$(cat "$OUTPUTS_FILE")"
elif OUTPUTS_JSON="$(terraform -chdir=terraform output -json 2>/dev/null)" && [[ "$OUTPUTS_JSON" != "{}" ]]; then
  :
elif [[ $DRY_RUN -eq 1 ]]; then
  OUTPUTS_JSON="" # placeholders below
else
  echo "monitor.sh: no Terraform outputs in terraform/ (run scripts/deploy.sh, or pass --outputs FILE)" >&2
  exit 1
fi

# out NAME [KEY]: an output value (KEY picks from a map output); "<NAME>" when there is none.
out() {
  if [[ -z "$OUTPUTS_JSON" ]]; then
    echo "<$1${2:+.$2}>"
    return
  fi
  python3 -c '
import json, sys
o = json.loads(sys.argv[1]).get(sys.argv[2], {}).get("value")
if len(sys.argv) > 3 and isinstance(o, dict):
    o = o.get(sys.argv[3])
print("<%s>" % sys.argv[2] if o is None else o)
' "$OUTPUTS_JSON" "$@"
}

REGION="$(out region)"
[[ "$REGION" == "<region>" ]] && REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-<region>}}"
CLUSTER="$(out ecs_cluster_name)"
JOBS_TABLE="$(out jobs_table_name)"
JOBS_INDEX="$(out jobs_status_index_name)"
[[ "$JOBS_INDEX" == "<jobs_status_index_name>" ]] && JOBS_INDEX=status-updated_at

# ---- helpers ------------------------------------------------------------------------------------
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
# AWS_ENDPOINT_URL (a local stand-in such as moto) is passed on explicitly: AWS CLI v1 ignores it for SQS.
aws_() { run aws ${AWS_ENDPOINT_URL:+--endpoint-url "$AWS_ENDPOINT_URL"} --region "$REGION" "$@"; }
header() { printf '\n%s\n' "== $* =="; }

cmd_tasks() {
  header "running worker tasks ($CLUSTER)"
  local arns
  if [[ $DRY_RUN -eq 1 ]]; then
    aws_ ecs list-tasks --cluster "$CLUSTER" --desired-status RUNNING --query 'taskArns' --output text
    arns="<task arns>"
  else
    arns="$(aws_ ecs list-tasks --cluster "$CLUSTER" --desired-status RUNNING --query 'taskArns' --output text)"
  fi
  if [[ -z "$arns" || "$arns" == "None" ]]; then
    echo "none"
    return
  fi
  # shellcheck disable=SC2086 # one argument per task ARN
  aws_ ecs describe-tasks --cluster "$CLUSTER" --tasks $arns --output table \
    --query 'tasks[].{task: taskArn, status: lastStatus, capacity: capacityProviderName, started: startedAt, job: overrides.containerOverrides[0].environment[?name==`JOB_ID`].value | [0], attempt: overrides.containerOverrides[0].environment[?name==`ATTEMPT`].value | [0]}'
}

query_status() { # status extra-args...
  local status="$1"
  shift
  aws_ dynamodb query --table-name "$JOBS_TABLE" --index-name "$JOBS_INDEX" \
    --key-condition-expression '#s = :s' \
    --expression-attribute-names '{"#s": "status"}' \
    --expression-attribute-values "{\":s\": {\"S\": \"$status\"}}" "$@"
}

cmd_jobs() {
  if [[ -n "$ARG" ]]; then
    header "latest jobs in $ARG ($JOBS_TABLE)"
    query_status "$ARG" --no-scan-index-forward --max-items 20 --output table \
      --query 'Items[].{job: job_id.S, kind: kind.S, attempt: attempt.N, updated: updated_at.S, version: last_version.N}'
    return
  fi
  header "jobs per status ($JOBS_TABLE, index $JOBS_INDEX)"
  local s n
  for s in "${STATUSES[@]}"; do
    if [[ $DRY_RUN -eq 1 ]]; then
      query_status "$s" --select COUNT --query Count --output text
    else
      n="$(query_status "$s" --select COUNT --query Count --output text)"
      printf '  %-11s %s\n' "$s" "$n"
    fi
  done
}

cmd_dlq() {
  header "queue depths (visible / in flight)"
  local name url depth
  for name in jobs_queue_url jobs_dlq_url stream_dlq_url; do
    url="$(out "$name")"
    if [[ $DRY_RUN -eq 1 ]]; then
      aws_ sqs get-queue-attributes --queue-url "$url" \
        --attribute-names ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible \
        --query 'Attributes.[ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible]' --output text
    else
      depth="$(aws_ sqs get-queue-attributes --queue-url "$url" \
        --attribute-names ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible \
        --query 'Attributes.[ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible]' --output text)"
      printf '  %-40s %s\n' "${url##*/}" "$(tr '\t' '/' <<<"$depth")"
    fi
  done
  echo "  (a message in a DLQ needs an operator: see docs/deploy.md, Operations)"
}

cmd_logs() {
  local group
  case "$ARG" in
    worker) group="$(out worker_log_group_name)" ;;
    api | dispatcher | projector | launcher | notifier | sweeper) group="$(out lambda_log_group_names "$ARG")" ;;
    *) echo "monitor.sh: logs of what? one of: $LOG_TARGETS" >&2; exit 2 ;;
  esac
  header "logs of $ARG ($group), since $SINCE"
  if [[ $DRY_RUN -eq 1 ]] || aws --version 2>&1 | grep -q '^aws-cli/2'; then
    aws_ logs tail "$group" --follow --since "$SINCE" --format short
  else
    # AWS CLI v1 has no `logs tail`: print the recent events once.
    local minutes="${SINCE%m}"
    [[ "$minutes" =~ ^[0-9]+$ ]] || minutes=10
    aws_ logs filter-log-events --log-group-name "$group" \
      --start-time "$((($(date +%s) - minutes * 60) * 1000))" --query 'events[].message' --output text
  fi
}

cmd_status() {
  cmd_tasks
  cmd_jobs
  cmd_dlq
}

[[ $DRY_RUN -eq 1 ]] && echo "# dry run: AWS CLI commands are printed, not run"
case "$COMMAND" in
  status) cmd_status ;;
  tasks) cmd_tasks ;;
  jobs) cmd_jobs ;;
  dlq) cmd_dlq ;;
  logs) cmd_logs ;;
  watch)
    interval="${ARG:-10}"
    if [[ $DRY_RUN -eq 1 ]]; then
      echo "# every ${interval}s:"
      cmd_status
    else
      while true; do
        clear 2>/dev/null || true
        date -u +'%Y-%m-%dT%H:%M:%SZ'
        cmd_status
        sleep "$interval"
      done
    fi
    ;;
  *) echo "monitor.sh: unknown command $COMMAND" >&2; usage >&2; exit 2 ;;
esac
