//! `SqliteJobQueue` behaves like an SQS FIFO queue: groups, order, deduplication, visibility,
//! receive counts, dead letters, and receivers woken without polling.

mod pipeline_support;

use std::sync::Arc;
use std::time::Duration;

use jobledger_events::JobId;
use jobledger_handlers::local::{QueueConfig, SqliteJobQueue};
use jobledger_handlers::ports::{JobMessage, JobQueue, QueueError, TimeSource};
use pipeline_support::TestTime;
use uuid::Uuid;

const VIS: Duration = Duration::from_secs(30);
const NOW: Duration = Duration::ZERO;

struct Q {
    _dir: tempfile::TempDir,
    queue: SqliteJobQueue,
    time: Arc<TestTime>,
}

fn queue_with(config: QueueConfig) -> Q {
    let dir = tempfile::tempdir().expect("temp dir");
    let time = Arc::new(TestTime::default());
    let clock = Arc::clone(&time);
    let queue = SqliteJobQueue::open_with(dir.path().join("queue.db"), config)
        .expect("open")
        .with_clock(Arc::new(move || clock.now()));
    Q {
        _dir: dir,
        queue,
        time,
    }
}

fn queue() -> Q {
    queue_with(QueueConfig::default())
}

fn msg(job: JobId, attempt: u32) -> JobMessage {
    JobMessage::new(job, attempt, None, Uuid::now_v7())
}

fn attempts(received: &[jobledger_handlers::ports::ReceivedMessage]) -> Vec<(JobId, u32)> {
    received
        .iter()
        .map(|m| {
            let body = JobMessage::from_body(&m.body).expect("job message");
            (body.job_id, body.attempt)
        })
        .collect()
}

#[tokio::test]
async fn a_group_comes_out_in_send_order() {
    let q = queue();
    let job = JobId::new();
    for attempt in 1..=3 {
        q.queue.send(&msg(job, attempt)).await.expect("send");
    }
    let got = q.queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), vec![(job, 1), (job, 2), (job, 3)]);
    assert!(got.iter().all(|m| m.receive_count == 1));
}

#[tokio::test]
async fn while_a_group_has_a_message_in_flight_no_other_message_of_it_is_handed_out() {
    let q = queue();
    let (a, b) = (JobId::new(), JobId::new());
    q.queue.send(&msg(a, 1)).await.expect("send");
    let first = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&first), vec![(a, 1)]);

    q.queue.send(&msg(a, 2)).await.expect("send");
    q.queue.send(&msg(b, 1)).await.expect("send");
    let second = q.queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(
        attempts(&second),
        vec![(b, 1)],
        "group a is blocked by its in-flight message"
    );

    q.queue
        .delete(&first[0].receipt_handle)
        .await
        .expect("delete");
    let third = q.queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(
        attempts(&third),
        vec![(a, 2)],
        "deleting the head frees the group"
    );
}

#[tokio::test]
async fn groups_are_served_oldest_first_with_their_messages_together() {
    let q = queue();
    let (a, b) = (JobId::new(), JobId::new());
    q.queue.send(&msg(a, 1)).await.expect("send");
    q.queue.send(&msg(b, 1)).await.expect("send");
    q.queue.send(&msg(a, 2)).await.expect("send");
    let got = q.queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), vec![(a, 1), (a, 2), (b, 1)]);
}

#[tokio::test]
async fn a_duplicate_within_five_minutes_is_accepted_but_not_enqueued_even_after_a_delete() {
    let q = queue();
    let m = msg(JobId::new(), 1);
    let first = q.queue.send(&m).await.expect("send");
    let again = q.queue.send(&m).await.expect("send duplicate");
    assert_eq!(first, again, "a duplicate answers the first message's id");
    assert_eq!(q.queue.stats().await.expect("stats").visible, 1);

    let got = q.queue.receive(10, VIS, NOW).await.expect("receive");
    q.queue
        .delete(&got[0].receipt_handle)
        .await
        .expect("delete");
    q.time.advance(chrono::Duration::minutes(4));
    assert_eq!(q.queue.send(&m).await.expect("send"), first);
    assert!(
        q.queue
            .receive(10, VIS, NOW)
            .await
            .expect("receive")
            .is_empty()
    );

    q.time.advance(chrono::Duration::seconds(61));
    let fresh = q.queue.send(&m).await.expect("send after the window");
    assert_ne!(
        fresh, first,
        "after the window the same id is a new message"
    );
    assert_eq!(
        q.queue.receive(10, VIS, NOW).await.expect("receive").len(),
        1
    );
}

#[tokio::test]
async fn an_unacknowledged_message_comes_back_after_its_visibility_timeout_with_a_new_receipt() {
    let q = queue();
    q.queue.send(&msg(JobId::new(), 1)).await.expect("send");
    let first = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert!(
        q.queue
            .receive(1, VIS, NOW)
            .await
            .expect("receive")
            .is_empty(),
        "hidden while in flight"
    );

    q.time.advance(chrono::Duration::seconds(31));
    let second = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
    assert!(matches!(
        q.queue.delete(&first[0].receipt_handle).await,
        Err(QueueError::InvalidReceipt)
    ));
    q.queue
        .delete(&second[0].receipt_handle)
        .await
        .expect("current receipt deletes");
    assert_eq!(q.queue.stats().await.expect("stats"), Default::default());
}

#[tokio::test]
async fn changing_visibility_hides_a_message_longer_or_returns_it_at_once() {
    let q = queue();
    q.queue.send(&msg(JobId::new(), 1)).await.expect("send");
    let got = q.queue.receive(1, VIS, NOW).await.expect("receive");
    q.queue
        .change_visibility(&got[0].receipt_handle, Duration::from_secs(600))
        .await
        .expect("extend");
    q.time.advance(chrono::Duration::seconds(31));
    assert!(
        q.queue
            .receive(1, VIS, NOW)
            .await
            .expect("receive")
            .is_empty(),
        "extended past 30 s"
    );

    q.queue
        .change_visibility(&got[0].receipt_handle, Duration::ZERO)
        .await
        .expect("return");
    assert_eq!(
        q.queue.receive(1, VIS, NOW).await.expect("receive").len(),
        1
    );
    assert!(matches!(
        q.queue.change_visibility("no-such-receipt", NOW).await,
        Err(QueueError::InvalidReceipt)
    ));
}

#[tokio::test]
async fn a_message_received_too_often_goes_to_the_dead_letter_queue_and_can_be_redriven() {
    let q = queue_with(QueueConfig {
        max_receives: 2,
        ..QueueConfig::default()
    });
    let job = JobId::new();
    q.queue.send(&msg(job, 1)).await.expect("send");
    q.queue.send(&msg(job, 2)).await.expect("send");
    for count in 1..=2 {
        let got = q.queue.receive(1, VIS, NOW).await.expect("receive");
        assert_eq!(attempts(&got), vec![(job, 1)]);
        assert_eq!(got[0].receive_count, count);
        q.time.advance(chrono::Duration::seconds(31));
    }
    // The third delivery would break the limit: the head moves aside and the group goes on.
    let got = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), vec![(job, 2)]);
    let dead = q.queue.dead_letters().await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].receive_count, 2);
    assert_eq!(dead[0].group_id, job.to_string());
    assert_eq!(q.queue.stats().await.expect("stats").dead, 1);

    q.queue
        .delete(&got[0].receipt_handle)
        .await
        .expect("delete");
    assert_eq!(q.queue.redrive(None).await.expect("redrive"), 1);
    assert!(q.queue.dead_letters().await.expect("list").is_empty());
    let back = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&back), vec![(job, 1)]);
    assert_eq!(
        back[0].receive_count, 1,
        "a redriven message starts counting again"
    );
}

#[tokio::test]
async fn a_waiting_receiver_is_woken_by_a_send() {
    let q = queue();
    let receiver = q.queue.clone();
    let started = tokio::time::Instant::now();
    let waiting =
        tokio::spawn(async move { receiver.receive(1, VIS, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "nothing to receive yet");
    let job = JobId::new();
    q.queue.send(&msg(job, 1)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("woken well before the 20 s wait ends")
        .expect("join")
        .expect("receive");
    assert_eq!(attempts(&got), vec![(job, 1)]);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_waiting_receiver_wakes_when_an_in_flight_message_returns() {
    let q = queue();
    q.queue.send(&msg(JobId::new(), 1)).await.expect("send");
    let first = q
        .queue
        .receive(1, Duration::from_millis(300), NOW)
        .await
        .expect("receive");
    let started = tokio::time::Instant::now();
    let again = q
        .queue
        .receive(1, VIS, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(again[0].message_id, first[0].message_id);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woke at the visibility expiry"
    );
}

#[tokio::test]
async fn a_receive_with_nothing_to_give_returns_empty_after_its_wait() {
    let q = queue();
    let started = tokio::time::Instant::now();
    let got = q
        .queue
        .receive(1, VIS, Duration::from_millis(200))
        .await
        .expect("receive");
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn messages_survive_reopening_the_queue_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("queue.db");
    let job = JobId::new();
    {
        let queue = SqliteJobQueue::open(&path).expect("open");
        queue.send(&msg(job, 1)).await.expect("send");
    }
    let queue = SqliteJobQueue::open(&path).expect("reopen");
    let got = queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), vec![(job, 1)]);
}

#[tokio::test]
async fn out_of_range_arguments_are_refused() {
    let q = queue();
    assert!(matches!(
        q.queue.receive(11, VIS, NOW).await,
        Err(QueueError::InvalidArgument(_))
    ));
    assert!(matches!(
        q.queue
            .receive(1, Duration::from_secs(13 * 3600), NOW)
            .await,
        Err(QueueError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_batch_send_keeps_each_group_in_order_answers_an_id_per_message_and_deduplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("queue.db");
    let (a, b) = (JobId::new(), JobId::new());
    let earlier = msg(b, 1);
    let ids = {
        let queue = SqliteJobQueue::open(&path).expect("open");
        let first = queue.send(&earlier).await.expect("send");
        let batch = [msg(a, 1), earlier.clone(), msg(a, 2), msg(b, 2)];
        let ids = queue.send_batch(&batch).await.expect("send batch");
        assert_eq!(ids.len(), batch.len(), "one id per message");
        assert_eq!(ids[1], first, "a duplicate answers the first message's id");
        assert!(queue.send_batch(&[]).await.expect("empty batch").is_empty());
        ids
    };
    // Acknowledged sends are durable: a reopened queue has them, each group in send order.
    let queue = SqliteJobQueue::open(&path).expect("reopen");
    let got = queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), vec![(b, 1), (b, 2), (a, 1), (a, 2)]);
    let got_ids: Vec<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
    for id in [&ids[0], &ids[2], &ids[3]] {
        assert!(got_ids.contains(&id.as_str()), "{id} in {got_ids:?}");
    }
}

#[tokio::test]
async fn a_batch_delete_counts_only_current_receipts_and_frees_the_groups() {
    let q = queue();
    let (a, b) = (JobId::new(), JobId::new());
    q.queue
        .send_batch(&[msg(a, 1), msg(a, 2), msg(b, 1)])
        .await
        .expect("send batch");
    // One message of each group is out; a's second message waits behind its first.
    let first = q.queue.receive(1, VIS, NOW).await.expect("receive");
    let second = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&first), vec![(a, 1)]);
    assert_eq!(attempts(&second), vec![(b, 1)]);
    assert!(
        q.queue
            .receive(10, VIS, NOW)
            .await
            .expect("receive")
            .is_empty()
    );

    // Both time out; a's message is received again, so its first receipt is stale.
    q.time.advance(chrono::Duration::seconds(31));
    let again = q.queue.receive(1, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&again), vec![(a, 1)]);
    let deleted = q
        .queue
        .delete_batch(&[
            first[0].receipt_handle.clone(),
            "no-such-receipt".into(),
            second[0].receipt_handle.clone(),
            again[0].receipt_handle.clone(),
        ])
        .await
        .expect("delete batch");
    assert_eq!(deleted, 2, "only current receipts delete");

    let next = q.queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&next), vec![(a, 2)], "a's next message is free");
    assert_eq!(q.queue.delete_batch(&[]).await.expect("empty"), 0);
}

/// Copies the queue's files into `to` as a power cut would leave them: the WAL cut at `wal_len`
/// bytes, what it held at the last fsync (later commits were in the page cache only).
fn power_cut_copy(from: &std::path::Path, wal_len: u64, to: &std::path::Path) {
    std::fs::copy(from, to).expect("copy the database");
    let wal = std::fs::read(wal_path(from)).expect("read the WAL");
    let cut = usize::try_from(wal_len).expect("WAL length");
    std::fs::write(wal_path(to), &wal[..cut]).expect("write the cut WAL");
}

fn wal_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

fn wal_len(db: &std::path::Path) -> u64 {
    std::fs::metadata(wal_path(db)).expect("WAL").len()
}

#[tokio::test]
async fn a_killed_queue_loses_no_message_and_redelivers_what_was_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("queue.db");
    let jobs: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
    let queue = SqliteJobQueue::open(&path).expect("open");
    for job in &jobs {
        queue.send(&msg(*job, 1)).await.expect("send");
    }
    let got = queue.receive(3, VIS, NOW).await.expect("receive");
    assert_eq!(got.len(), 3);
    queue.delete(&got[0].receipt_handle).await.expect("delete");
    queue
        .change_visibility(&got[1].receipt_handle, Duration::from_secs(600))
        .await
        .expect("hide longer");
    // The process is killed here: no close, no checkpoint. Everything written survives in the
    // page cache, so the files are as they are now, WAL and all.
    let killed = dir.path().join("killed.db");
    power_cut_copy(&path, wal_len(&path), &killed);

    let reopened = SqliteJobQueue::open(&killed).expect("reopen");
    let stats = reopened.stats().await.expect("stats");
    assert_eq!(
        (stats.visible, stats.in_flight),
        (1, 2),
        "the delete held; two are still in flight, the fourth waits"
    );
    let mut seen = attempts(&reopened.receive(10, VIS, NOW).await.expect("receive"));
    let late = Arc::new(TestTime::default());
    late.advance(chrono::Duration::seconds(601));
    let clock = Arc::clone(&late);
    let later = reopened.with_clock(Arc::new(move || clock.now()));
    seen.extend(attempts(
        &later.receive(10, VIS, NOW).await.expect("receive"),
    ));
    // The fourth, taken just after the restart and never deleted, comes back as well.
    seen.sort();
    seen.dedup();
    let mut expected: Vec<(JobId, u32)> = jobs[1..].iter().map(|j| (*j, 1)).collect();
    expected.sort();
    assert_eq!(seen, expected, "everything not deleted is delivered again");
}

#[tokio::test]
async fn a_power_cut_forgets_only_unsynced_receives_and_deletes_so_messages_come_back_never_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("queue.db");
    let queue = SqliteJobQueue::open(&path).expect("open");
    let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
    queue
        .send_batch(&[msg(a, 1), msg(a, 2), msg(b, 1)])
        .await
        .expect("send");
    let synced = wal_len(&path);

    // Received, deleted and hidden: committed without fsync.
    let got = queue.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(attempts(&got), [(a, 1), (a, 2), (b, 1)]);
    assert_eq!(
        queue
            .delete_batch(&[got[0].receipt_handle.clone()])
            .await
            .expect("delete"),
        1
    );
    queue
        .change_visibility(&got[2].receipt_handle, Duration::from_secs(600))
        .await
        .expect("hide");
    assert!(wal_len(&path) > synced, "the lazy commits are in the WAL");

    let cut = dir.path().join("cut.db");
    power_cut_copy(&path, synced, &cut);
    let after_cut = SqliteJobQueue::open(&cut).expect("open after the cut");
    let back = after_cut.receive(10, VIS, NOW).await.expect("receive");
    assert_eq!(
        attempts(&back),
        [(a, 1), (a, 2), (b, 1)],
        "every sent message is there, in order; the deleted one comes back"
    );
    assert!(
        back.iter().all(|m| m.receive_count == 1),
        "the lost receives are not counted"
    );

    // The next send is fsynced, and with it every lazy commit before it.
    queue.send(&msg(c, 1)).await.expect("send");
    let cut = dir.path().join("cut2.db");
    power_cut_copy(&path, wal_len(&path), &cut);
    let after_cut = SqliteJobQueue::open(&cut).expect("open after the second cut");
    let stats = after_cut.stats().await.expect("stats");
    assert_eq!(
        (stats.visible, stats.in_flight),
        (1, 2),
        "the delete is durable now: a2 and b1 in flight, only c1 waiting"
    );
}
