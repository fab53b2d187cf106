//! `SqsJobQueue` against moto's SQS FIFO (run under `scripts/with-moto`).
#![cfg(feature = "aws")]

use std::time::Duration;

use jobledger_events::JobId;
use jobledger_handlers::aws::SqsJobQueue;
use jobledger_handlers::ports::{JobMessage, JobQueue, MAX_VISIBILITY, QueueError};
use uuid::Uuid;

async fn sdk() -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL is not set: run this test under scripts/with-moto (it needs moto's SQS)"
    );
    jobledger_handlers::aws::sdk_config().await
}

/// A fresh FIFO queue with a unique name (tests share one moto server).
async fn fifo_queue() -> SqsJobQueue {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let name = format!("jobs-{}.fifo", Uuid::now_v7().simple());
    let out = client
        .create_queue()
        .queue_name(name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "30",
        )
        .send()
        .await
        .expect("create FIFO queue on moto");
    SqsJobQueue::new(client, out.queue_url.expect("queue url"))
}

const WAIT: Duration = Duration::from_secs(1);
const HIDE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_sent_message_comes_back_with_its_body_group_and_receive_count() {
    let queue = fifo_queue().await;
    let message = JobMessage::new(JobId::new(), 1, None, Uuid::now_v7());
    let id = queue.send(&message).await.expect("send");

    let got = queue.receive(10, HIDE, WAIT).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id);
    assert_eq!(got[0].receive_count, 1);
    assert_eq!(JobMessage::from_body(&got[0].body).expect("body"), message);

    // Visible again at once: the next delivery counts as the second.
    queue
        .change_visibility(&got[0].receipt_handle, Duration::ZERO)
        .await
        .expect("change visibility");
    let again = queue.receive(10, HIDE, WAIT).await.expect("receive again");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);

    queue
        .delete(&again[0].receipt_handle)
        .await
        .expect("delete");
    assert!(
        queue
            .receive(10, HIDE, WAIT)
            .await
            .expect("receive")
            .is_empty()
    );
}

#[tokio::test]
async fn a_duplicate_event_id_within_the_window_enqueues_nothing() {
    let queue = fifo_queue().await;
    let message = JobMessage::new(JobId::new(), 1, None, Uuid::now_v7());
    queue.send(&message).await.expect("first send");
    queue
        .send(&message)
        .await
        .expect("duplicate send is accepted");
    let got = queue.receive(10, HIDE, WAIT).await.expect("receive");
    assert_eq!(got.len(), 1, "the duplicate must not be delivered");
}

#[tokio::test]
async fn a_hidden_message_holds_back_only_its_own_job() {
    let queue = fifo_queue().await;
    let (a, b) = (JobId::new(), JobId::new());
    let a1 = JobMessage::new(a, 1, None, Uuid::now_v7());
    let a2 = JobMessage::new(a, 2, None, Uuid::now_v7());
    let b1 = JobMessage::new(b, 1, None, Uuid::now_v7());
    for m in [&a1, &a2, &b1] {
        queue.send(m).await.expect("send");
    }
    // Take job a's first message and hide it (a retry's not_before): a2 stays behind it, b1 does not.
    let first = queue.receive(1, HIDE, WAIT).await.expect("receive");
    assert_eq!(JobMessage::from_body(&first[0].body).expect("body"), a1);
    queue
        .change_visibility(&first[0].receipt_handle, MAX_VISIBILITY)
        .await
        .expect("hide for 12 h");
    let rest = queue.receive(10, HIDE, WAIT).await.expect("receive");
    let bodies: Vec<JobMessage> = rest
        .iter()
        .map(|m| JobMessage::from_body(&m.body).expect("body"))
        .collect();
    assert_eq!(
        bodies,
        vec![b1],
        "only the other job's message is delivered"
    );
}

#[tokio::test]
async fn out_of_range_arguments_and_stale_receipts_are_typed_errors() {
    let queue = fifo_queue().await;
    assert!(matches!(
        queue.receive(11, HIDE, WAIT).await,
        Err(QueueError::InvalidArgument(_))
    ));
    assert!(matches!(
        queue
            .receive(1, MAX_VISIBILITY + Duration::from_secs(1), WAIT)
            .await,
        Err(QueueError::InvalidArgument(_))
    ));
    assert!(matches!(
        queue
            .change_visibility("whatever", MAX_VISIBILITY + Duration::from_secs(1))
            .await,
        Err(QueueError::InvalidArgument(_))
    ));
    let err = queue
        .change_visibility("not-a-receipt-handle", Duration::ZERO)
        .await
        .expect_err("a made-up receipt handle is refused");
    assert!(matches!(err, QueueError::InvalidReceipt), "{err:?}");
}
