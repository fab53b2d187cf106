//! The AWS adapters and the Lambda glue: SQS FIFO, ECS Fargate, DynamoDB stream decoding,
//! Lambda responses and diagnostics, typed configuration, JSON logs and CloudWatch metrics.
//!
//! Only this module and `src/bin/` know about Lambda; the cores receive decoded records.

pub mod config;
pub mod contract;
pub mod ecs;
pub mod functions;
pub mod glue;
pub mod lambda;
pub mod logging;
pub mod metrics;
pub mod sqs;
pub mod stream;

pub use config::ConfigError;
pub use ecs::{EcsConfig, EcsTaskLauncher};
pub use sqs::SqsJobQueue;

// One builder for the worker, the Lambdas and the tools: see `jobledger_workers::aws_clients`.
pub use jobledger_workers::aws_clients::{s3_client, sdk_config};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// Error codes AWS services use for throttling (they differ per service and protocol).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "ServiceUnavailable",
];

/// Whether an SDK call may succeed if tried again: throttling, 5xx, timeouts, connection failures.
pub(crate) fn sdk_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(r) => r.raw().status().is_server_error(),
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error()
                || s.raw().status().as_u16() == 429
                || err.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
        }
        _ => false,
    }
}

/// An SDK error as text with its service code, for logs and the ledger (the SDK's `Display` is terse).
pub(crate) fn sdk_message<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
    }
}
