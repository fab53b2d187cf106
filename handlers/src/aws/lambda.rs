//! Lambda responses in one place: errors become a `Diagnostic` (Retryable or NonRetryable), and
//! batch reports become `batchItemFailures`.

use std::fmt::Display;

use aws_lambda_events::event::streams::{
    DynamoDbBatchItemFailure, DynamoDbEventResponse, SqsBatchItemFailure, SqsEventResponse,
};
use lambda_runtime::Diagnostic;

/// The `errorType` of a failure Lambda may retry (throttling, a backend that is briefly down).
pub const RETRYABLE: &str = "Retryable";
/// The `errorType` of a failure retrying will not fix (bad configuration, a malformed event).
pub const NON_RETRYABLE: &str = "NonRetryable";

/// The one mapping from an error to a Lambda `Diagnostic`.
pub fn diagnostic(error: &impl Display, retryable: bool) -> Diagnostic {
    Diagnostic {
        error_type: if retryable { RETRYABLE } else { NON_RETRYABLE }.to_string(),
        error_message: error.to_string(),
    }
}

/// A stream batch's answer: every id listed is delivered again (Lambda restarts at the lowest).
pub fn stream_response(failed_ids: Vec<String>) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = failed_ids
        .into_iter()
        .map(|id| {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(id);
            failure
        })
        .collect();
    response
}

/// An SQS batch's answer: listed messages stay on the queue, the others are deleted by Lambda.
pub fn sqs_response(failed_ids: Vec<String>) -> SqsEventResponse {
    let mut response = SqsEventResponse::default();
    response.batch_item_failures = failed_ids
        .into_iter()
        .map(|id| {
            let mut failure = SqsBatchItemFailure::default();
            failure.item_identifier = Some(id);
            failure
        })
        .collect();
    response
}

/// The ids of `all` from the first one in `failed` on: stop-at-first-failure, expressed in the
/// source batch's own order (records the core ignored included).
pub fn fail_from(all: &[String], failed: &[String]) -> Vec<String> {
    match all.iter().position(|id| failed.contains(id)) {
        Some(first) => all[first..].to_vec(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_name_whether_a_retry_can_help() {
        let d = diagnostic(&"throttled", true);
        assert_eq!(d.error_type, "Retryable");
        assert_eq!(d.error_message, "throttled");
        assert_eq!(diagnostic(&"bad config", false).error_type, "NonRetryable");
    }

    #[test]
    fn responses_serialise_as_lambda_expects() {
        let json = serde_json::to_value(sqs_response(vec!["m-2".into()])).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]})
        );
        let json = serde_json::to_value(stream_response(vec![])).expect("json");
        assert_eq!(json, serde_json::json!({"batchItemFailures": []}));
    }

    #[test]
    fn failures_extend_to_every_later_record_of_the_batch() {
        let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(fail_from(&all, &["c".into(), "b".into()]), ["b", "c", "d"]);
        assert!(fail_from(&all, &[]).is_empty());
    }
}
