//! Ordered batch processing, as AWS wants it for streams and FIFO queues: records run one after
//! another, the first failure stops the batch, and that record and every later one are reported as
//! failed (Lambda's `batchItemFailures`), so nothing of a job is ever processed out of order.

use std::future::Future;

/// The outcome of a batch: which records must be delivered again.
#[derive(Debug)]
pub struct BatchReport<E> {
    /// Ids of the records not processed: the failed one first, then every later one, in order.
    /// Empty when the whole batch succeeded. Lambda's `batchItemFailures[].itemIdentifier`.
    pub failed_ids: Vec<String>,
    /// How many records, from the start, succeeded.
    pub succeeded: usize,
    /// The error that stopped the batch.
    pub error: Option<E>,
}

impl<E> BatchReport<E> {
    /// Whether every record succeeded.
    pub fn is_complete(&self) -> bool {
        self.failed_ids.is_empty()
    }
}

/// Runs `handle` on each record in order, stopping at the first error.
///
/// `id_of` names a record the way the event source does (a stream sequence number, a message id).
pub async fn process_in_order<'a, T, E, F, Fut>(
    records: &'a [T],
    id_of: impl Fn(&T) -> String,
    mut handle: F,
) -> BatchReport<E>
where
    F: FnMut(&'a T) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    for (i, record) in records.iter().enumerate() {
        if let Err(error) = handle(record).await {
            return BatchReport {
                failed_ids: records[i..].iter().map(&id_of).collect(),
                succeeded: i,
                error: Some(error),
            };
        }
    }
    BatchReport {
        failed_ids: Vec::new(),
        succeeded: records.len(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[tokio::test]
    async fn the_first_failure_stops_the_batch_and_fails_every_later_record() {
        let records = ["a", "b", "c", "d"];
        let seen = RefCell::new(Vec::new());
        let report = process_in_order(
            &records,
            |r| r.to_string(),
            |r| {
                seen.borrow_mut().push(*r);
                let result = if *r == "b" { Err("b broke") } else { Ok(()) };
                async move { result }
            },
        )
        .await;
        assert_eq!(report.failed_ids, vec!["b", "c", "d"]);
        assert_eq!(report.succeeded, 1);
        assert_eq!(report.error, Some("b broke"));
        assert_eq!(
            *seen.borrow(),
            vec!["a", "b"],
            "records after the failure must not run"
        );
    }

    #[tokio::test]
    async fn a_clean_batch_reports_no_failures() {
        let records = [1, 2, 3];
        let report =
            process_in_order(&records, |r| r.to_string(), |_| async { Ok::<(), ()>(()) }).await;
        assert!(report.is_complete());
        assert_eq!(report.succeeded, 3);
        assert!(report.error.is_none());
    }
}
