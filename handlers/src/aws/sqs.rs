//! `SqsJobQueue`: the work queue on SQS FIFO.
//!
//! One message group per job (`MessageGroupId = job_id`), so a job's messages stay in order and a
//! hidden message (a retry's `not_before`) holds back only its own job; `MessageDeduplicationId =
//! event_id`, so a re-delivered ledger event enqueues nothing new within SQS's 5-minute window.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageSystemAttributeName;

use super::{sdk_message, sdk_retryable};
use crate::ports::{JobMessage, JobQueue, MAX_VISIBILITY, QueueError, ReceivedMessage};

/// SQS's longest long-poll wait.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's largest receive batch.
pub const MAX_RECEIVE: usize = 10;
/// SQS counts its 12-hour visibility limit from the message's receipt, not from the change, so
/// long hides are shortened by this much: more than a Lambda invocation can last. A message that
/// comes back a little early is simply deferred again by the launcher.
pub const RECEIPT_MARGIN: Duration = Duration::from_secs(15 * 60);

/// The work queue on an SQS FIFO queue.
#[derive(Clone, Debug)]
pub struct SqsJobQueue {
    client: Client,
    queue_url: String,
}

impl SqsJobQueue {
    /// A queue adapter for `queue_url` (a `.fifo` queue).
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        SqsJobQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

fn backend<E>(
    err: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    QueueError::backend(sdk_retryable(&err), sdk_message(&err))
}

/// Receipt-handle errors are their own variant: the caller treats them as "someone else owns it".
fn receipt_error<E>(
    err: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match err.code() {
        Some(
            "ReceiptHandleIsInvalid"
            | "InvalidReceiptHandle"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight",
        ) => QueueError::InvalidReceipt,
        _ => backend(err),
    }
}

fn whole_seconds(d: Duration, what: &str) -> Result<i32, QueueError> {
    if d > MAX_VISIBILITY {
        return Err(QueueError::InvalidArgument(format!(
            "{what} {d:?} exceeds SQS's maximum of 12 hours"
        )));
    }
    // Round up: hiding a message a little longer is safe, showing it early is not.
    let secs = d.as_millis().div_ceil(1000);
    i32::try_from(secs).map_err(|_| QueueError::InvalidArgument(format!("{what} {d:?} too large")))
}

impl JobQueue for SqsJobQueue {
    async fn send(&self, message: &JobMessage) -> Result<String, QueueError> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message.to_body())
            .message_group_id(message.group_id())
            .message_deduplication_id(message.dedup_id())
            .send()
            .await
            .map_err(backend)?;
        out.message_id
            .ok_or_else(|| QueueError::backend(false, "SendMessage answered without a MessageId"))
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        if max == 0 || max > MAX_RECEIVE {
            return Err(QueueError::InvalidArgument(format!(
                "receive takes 1 to {MAX_RECEIVE} messages, not {max}"
            )));
        }
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max as i32)
            .visibility_timeout(whole_seconds(visibility, "visibility")?)
            .wait_time_seconds(wait.min(MAX_WAIT).as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(backend)?;
        out.messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                match (m.message_id, m.receipt_handle) {
                    (Some(message_id), Some(receipt_handle)) => Ok(ReceivedMessage {
                        message_id,
                        receipt_handle,
                        receive_count,
                        body: m.body.unwrap_or_default(),
                    }),
                    _ => Err(QueueError::backend(
                        false,
                        "ReceiveMessage answered a message without id or receipt handle",
                    )),
                }
            })
            .collect()
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(receipt_error)?;
        Ok(())
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(
                whole_seconds(timeout, "visibility timeout")?
                    .min(whole_seconds(MAX_VISIBILITY - RECEIPT_MARGIN, "margin")?),
            )
            .send()
            .await
            .map_err(receipt_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_is_rounded_up_to_whole_seconds_and_bounded_by_twelve_hours() {
        assert_eq!(
            whole_seconds(Duration::from_millis(1001), "v").ok(),
            Some(2)
        );
        assert_eq!(whole_seconds(Duration::ZERO, "v").ok(), Some(0));
        assert_eq!(whole_seconds(MAX_VISIBILITY, "v").ok(), Some(43_200));
        assert!(whole_seconds(MAX_VISIBILITY + Duration::from_secs(1), "v").is_err());
    }
}
