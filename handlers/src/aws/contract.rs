//! The contract between each deployed binary and `terraform/`: the configuration it reads at cold
//! start, the adapters through which it calls AWS, and the IAM actions its role must allow.
//!
//! One entry per Lambda binary in `src/bin/` (the binary's name is the function's key in
//! `terraform/lambda.tf`) plus the ECS worker. `tests/terraform_contract.rs` holds three things to
//! each other: the code (which binaries exist, which variables each config asks for, which SDK
//! calls the adapters make), this table, and the Terraform. Adding an SDK call to an adapter, an
//! adapter to a binary, or a variable to a config fails that test until this table and the
//! Terraform say how the deployment allows it.

use jobledger_workers::WorkerEnv;

use super::config::{
    ApiLambdaConfig, DispatcherConfig, LauncherConfig, NotifierLambdaConfig, ProjectorConfig,
    SweeperConfig,
};

/// What invokes a binary; the trigger decides which actions the platform performs with its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// API Gateway invokes the function; the role needs nothing for it.
    ApiGateway,
    /// An event source mapping on the events table's stream, with an SQS on-failure destination.
    EventsStream,
    /// An event source mapping on the jobs FIFO queue.
    JobsQueue,
    /// EventBridge rules invoke the function; the role needs nothing for it.
    EventBridge,
    /// The launcher's `RunTask`: an ECS task (the worker), not a Lambda function.
    EcsTask,
}

impl Trigger {
    /// Actions Lambda itself performs with the function's role for this trigger (not our code).
    pub fn platform_actions(self) -> &'static [&'static str] {
        match self {
            // Lambda reads the stream with the function's role, and sends the on-failure record
            // to the stream DLQ with it too.
            Trigger::EventsStream => &[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "sqs:SendMessage",
            ],
            // Lambda polls and deletes the messages with the function's role.
            Trigger::JobsQueue => &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
            ],
            Trigger::ApiGateway | Trigger::EventBridge | Trigger::EcsTask => &[],
        }
    }
}

/// Actions every Lambda role has for writing its own log group (the `lambda_function` module).
pub const LAMBDA_LOG_ACTIONS: &[&str] = &["logs:CreateLogStream", "logs:PutLogEvents"];

/// Variables read outside the typed configs: the log filter (`logging::init`, and the worker's
/// subscriber, both through `EnvFilter::try_from_default_env`).
pub const LOG_FILTER_ENV: &[&str] = &[lambda_runtime::tracing::subscriber::EnvFilter::DEFAULT_ENV];

/// An SDK call an adapter makes that a binary linking the adapter never reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotCalled {
    /// The adapter's source file, relative to the workspace root.
    pub adapter: &'static str,
    /// The SDK operation as the Rust SDK names it (`get_item`, `put_object`, …).
    pub call: &'static str,
    /// Why the binary never reaches it.
    pub why: &'static str,
}

/// Reads a binary's typed configuration through a lookup; the error names the variable at fault.
pub type ReadConfig = fn(&dyn Fn(&str) -> Option<String>) -> Result<(), String>;

/// One deployed binary.
#[derive(Clone, Copy, Debug)]
pub struct Deployed {
    /// The binary, and the function key in Terraform (`worker` for the ECS task).
    pub name: &'static str,
    /// What invokes it.
    pub trigger: Trigger,
    /// The type whose `from_env()` the binary calls at cold start.
    pub config_type: &'static str,
    /// Calls that type's `from_lookup`.
    pub read_config: ReadConfig,
    /// Source files (workspace-relative) whose AWS SDK calls the binary can reach.
    pub adapters: &'static [&'static str],
    /// IAM actions the binary's role must allow (the code's calls plus the trigger's).
    pub iam_actions: &'static [&'static str],
    /// Calls of its adapters it never makes, with the reason.
    pub not_called: &'static [NotCalled],
}

/// Ties a config type's name to its `from_lookup`, so the two cannot drift apart.
macro_rules! config {
    ($ty:ident) => {
        (
            stringify!($ty),
            |lookup: &dyn Fn(&str) -> Option<String>| {
                $ty::from_lookup(|name: &str| lookup(name))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
    };
}

const EVENTS: &str = "events/src/dynamo.rs";
const VIEWS: &str = "projections/src/dynamo.rs";
const OBJECTS: &str = "workers/src/s3.rs";
const QUEUE: &str = "handlers/src/aws/sqs.rs";
const TASKS: &str = "handlers/src/aws/ecs.rs";
const BEDROCK: &str = "workers/src/backends/bedrock.rs";
const NOTIFY_STATE: &str = "handlers/src/notify/dynamo.rs";
const SECRETS: &str = "handlers/src/notify/secrets.rs";

/// Calls made only by setup helpers (tests, `jobledger` tooling), never by a deployed binary:
/// Terraform creates the tables and the bucket.
pub const SETUP_ONLY: &[NotCalled] = &[
    NotCalled {
        adapter: EVENTS,
        call: "create_table",
        why: "DynamoEventStore::create_tables is for tests; Terraform creates the tables",
    },
    NotCalled {
        adapter: EVENTS,
        call: "describe_table",
        why: "only create_tables waits for a table to become active",
    },
    NotCalled {
        adapter: EVENTS,
        call: "update_time_to_live",
        why: "only create_tables sets the TTL; Terraform does in AWS",
    },
    NotCalled {
        adapter: EVENTS,
        call: "create_bucket",
        why: "only create_tables makes the payload bucket; Terraform does in AWS",
    },
    NotCalled {
        adapter: VIEWS,
        call: "create_table",
        why: "DynamoJobViews::create_table is for tests; Terraform creates the table",
    },
    NotCalled {
        adapter: VIEWS,
        call: "describe_table",
        why: "only create_table waits for the table to become active",
    },
    NotCalled {
        adapter: NOTIFY_STATE,
        call: "create_table",
        why: "DynamoNotifyStore::create_table is for tests; Terraform creates the table",
    },
    NotCalled {
        adapter: NOTIFY_STATE,
        call: "describe_table",
        why: "only create_table waits for the table to become active",
    },
];

// The reasons shared by several binaries.
const EVENTS_ONLY: &str = "DynamoEventStore::events_only: no idempotency table to read";
const NO_OFFLOAD: &str = "DynamoEventStore::events_only has no payload bucket; its events \
                          (JobQueued, TaskLaunched, AttemptTimedOut, ...) are far below the 300 KB \
                          offload size";
const NO_REBUILD: &str =
    "scan, clear and upsert_many are the replay tool's rebuild, not a Lambda's";

/// Every Lambda binary in `src/bin/`.
pub fn lambda_functions() -> Vec<Deployed> {
    let api = config!(ApiLambdaConfig);
    let dispatcher = config!(DispatcherConfig);
    let projector = config!(ProjectorConfig);
    let launcher = config!(LauncherConfig);
    let sweeper = config!(SweeperConfig);
    let notifier = config!(NotifierLambdaConfig);
    vec![
        Deployed {
            name: "api",
            trigger: Trigger::ApiGateway,
            config_type: api.0,
            read_config: api.1,
            adapters: &[EVENTS, VIEWS, OBJECTS],
            iam_actions: &[
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "s3:GetObject",
                "s3:PutObject",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: VIEWS,
                    call: "update_item",
                    why: "only the projector writes the read model",
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "scan",
                    why: NO_REBUILD,
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "batch_write_item",
                    why: NO_REBUILD,
                },
            ],
        },
        Deployed {
            name: "dispatcher",
            trigger: Trigger::EventsStream,
            config_type: dispatcher.0,
            read_config: dispatcher.1,
            adapters: &[EVENTS, QUEUE],
            iam_actions: &[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "dynamodb:Query",
                "dynamodb:PutItem",
                "s3:GetObject",
                "sqs:SendMessage",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: EVENTS,
                    call: "get_item",
                    why: EVENTS_ONLY,
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "put_object",
                    why: NO_OFFLOAD,
                },
                NotCalled {
                    adapter: QUEUE,
                    call: "receive_message",
                    why: "the dispatcher only sends; Lambda's queue mapping receives for the launcher",
                },
                NotCalled {
                    adapter: QUEUE,
                    call: "delete_message",
                    why: "the dispatcher only sends",
                },
                NotCalled {
                    adapter: QUEUE,
                    call: "change_message_visibility",
                    why: "only the launcher defers messages until their not_before",
                },
            ],
        },
        Deployed {
            name: "projector",
            trigger: Trigger::EventsStream,
            config_type: projector.0,
            read_config: projector.1,
            adapters: &[EVENTS, VIEWS],
            iam_actions: &[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:UpdateItem",
                "s3:GetObject",
                "sqs:SendMessage",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: EVENTS,
                    call: "transact_write_items",
                    why: "the projector never appends events",
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "put_object",
                    why: "the projector never appends events",
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "scan",
                    why: NO_REBUILD,
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "batch_write_item",
                    why: NO_REBUILD,
                },
            ],
        },
        Deployed {
            name: "launcher",
            trigger: Trigger::JobsQueue,
            config_type: launcher.0,
            read_config: launcher.1,
            adapters: &[EVENTS, QUEUE, TASKS],
            iam_actions: &[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ChangeMessageVisibility",
                "ecs:RunTask",
                "ecs:TagResource",
                "iam:PassRole",
                "dynamodb:Query",
                "dynamodb:PutItem",
                "s3:GetObject",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: EVENTS,
                    call: "get_item",
                    why: EVENTS_ONLY,
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "put_object",
                    why: NO_OFFLOAD,
                },
                NotCalled {
                    adapter: QUEUE,
                    call: "send_message",
                    why: "only the dispatcher enqueues",
                },
            ],
        },
        Deployed {
            name: "notifier",
            trigger: Trigger::EventsStream,
            config_type: notifier.0,
            read_config: notifier.1,
            adapters: &[EVENTS, NOTIFY_STATE, SECRETS, OBJECTS],
            iam_actions: &[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "dynamodb:Query",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "s3:GetObject",
                "secretsmanager:GetSecretValue",
                "sqs:SendMessage",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: EVENTS,
                    call: "get_item",
                    why: EVENTS_ONLY,
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "transact_write_items",
                    why: "the notifier never appends events (a rebuild never re-notifies either)",
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "put_object",
                    why: "the notifier never appends events",
                },
                NotCalled {
                    adapter: OBJECTS,
                    call: "put_object",
                    why: "the notifier only links results (HeadObject + presigned GET)",
                },
                NotCalled {
                    adapter: NOTIFY_STATE,
                    call: "scan",
                    why: "listing dead letters is an operator action (jobledger notify), not the Lambda's",
                },
                NotCalled {
                    adapter: NOTIFY_STATE,
                    call: "delete_item",
                    why: "removing dead letters is an operator action (jobledger notify), not the Lambda's",
                },
            ],
        },
        Deployed {
            name: "sweeper",
            trigger: Trigger::EventBridge,
            config_type: sweeper.0,
            read_config: sweeper.1,
            adapters: &[EVENTS, VIEWS],
            iam_actions: &[
                "dynamodb:Query",
                "dynamodb:PutItem",
                "s3:GetObject",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            ],
            not_called: &[
                NotCalled {
                    adapter: EVENTS,
                    call: "get_item",
                    why: EVENTS_ONLY,
                },
                NotCalled {
                    adapter: EVENTS,
                    call: "put_object",
                    why: NO_OFFLOAD,
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "get_item",
                    why: "the sweep lists candidates by status (the GSI), it reads no single view",
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "update_item",
                    why: "only the projector writes the read model",
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "scan",
                    why: NO_REBUILD,
                },
                NotCalled {
                    adapter: VIEWS,
                    call: "batch_write_item",
                    why: NO_REBUILD,
                },
            ],
        },
    ]
}

/// The worker: an ECS task the launcher starts, with `JOB_ID` and `ATTEMPT` as overrides.
pub fn worker() -> Deployed {
    let worker = config!(WorkerEnv);
    Deployed {
        name: "worker",
        trigger: Trigger::EcsTask,
        config_type: worker.0,
        read_config: worker.1,
        adapters: &[EVENTS, OBJECTS, BEDROCK],
        iam_actions: &[
            "dynamodb:Query",
            "dynamodb:PutItem",
            "s3:GetObject",
            "s3:PutObject",
            "bedrock:InvokeModel",
        ],
        not_called: &[NotCalled {
            adapter: EVENTS,
            call: "get_item",
            why: "the worker appends no idempotency keys and reads none",
        }],
    }
}
