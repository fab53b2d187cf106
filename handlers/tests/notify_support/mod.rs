//! The notifier state-store conformance cases, run against every store (`SqliteNotifyStore` in
//! `notify_state.rs`, `DynamoNotifyStore` on moto in `notify_dynamo.rs`), so both keep the same
//! promises: per-sink state that never goes back, whatever order writes arrive in; failure counts;
//! a dead-letter list that merges repeats of a record.

use chrono::{DateTime, TimeZone, Utc};
use jobledger_events::JobId;
use jobledger_handlers::notify::{
    DeadLetterStore, FailureCounter, NewDeadLetter, NotifyStateStore, SinkState,
};

/// What every notifier state store must do.
pub trait ConformingStore:
    NotifyStateStore + DeadLetterStore + FailureCounter + Clone + 'static
{
}

impl<T: NotifyStateStore + DeadLetterStore + FailureCounter + Clone + 'static> ConformingStore
    for T
{
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
        .single()
        .expect("time")
}

fn state(version: u64, ts: &str) -> SinkState {
    SinkState {
        last_version: version,
        external_id: Some(ts.to_string()),
        channel: Some("C0CHAN".into()),
        message_version: version,
        reply_version: 0,
    }
}

/// Runs every case; each uses its own job ids, so a shared table is fine.
pub async fn conformance<S: ConformingStore>(store: &S) {
    unknown_jobs_have_the_default_state(store).await;
    state_never_goes_back_and_is_per_sink(store).await;
    reordered_and_duplicated_writes_end_at_the_highest_version(store).await;
    concurrent_writers_cannot_regress_the_state(store).await;
    failures_are_counted_per_sink_job_and_version(store).await;
    dead_letters_merge_repeats_list_oldest_first_and_remove_once(store).await;
}

async fn unknown_jobs_have_the_default_state<S: ConformingStore>(store: &S) {
    let got = store.get("notion", JobId::new()).await.expect("get");
    assert_eq!(got, SinkState::default());
}

async fn state_never_goes_back_and_is_per_sink<S: ConformingStore>(store: &S) {
    let job = JobId::new();
    let newer = state(5, "1700000000.000100");
    assert!(store.put("notion", job, &newer).await.expect("put"));
    let older = SinkState {
        external_id: Some("other".into()),
        ..state(3, "x")
    };
    assert!(
        !store.put("notion", job, &older).await.expect("put"),
        "a late write must not win"
    );
    assert_eq!(store.get("notion", job).await.expect("get"), newer);
    // A step of the same delivery (same last_version) is saved: it records what was created.
    let step = SinkState {
        reply_version: 5,
        ..newer.clone()
    };
    assert!(store.put("notion", job, &step).await.expect("put"));
    assert_eq!(store.get("notion", job).await.expect("get"), step);
    assert_eq!(
        store.get("slack-bot", job).await.expect("get"),
        SinkState::default(),
        "state is per sink"
    );
    // Nothing created yet: absent ids read back as absent.
    let bare = SinkState {
        last_version: 1,
        ..SinkState::default()
    };
    assert!(store.put("slack-bot", job, &bare).await.expect("put"));
    assert_eq!(store.get("slack-bot", job).await.expect("get"), bare);
}

async fn reordered_and_duplicated_writes_end_at_the_highest_version<S: ConformingStore>(store: &S) {
    let job = JobId::new();
    let mut written = Vec::new();
    for v in [3, 1, 5, 5, 2, 4, 3] {
        written.push(
            store
                .put("slack-bot", job, &state(v, &format!("ts{v}")))
                .await
                .expect("put"),
        );
    }
    assert_eq!(written, [true, false, true, true, false, false, false]);
    assert_eq!(
        store.get("slack-bot", job).await.expect("get"),
        state(5, "ts5")
    );
}

async fn concurrent_writers_cannot_regress_the_state<S: ConformingStore>(store: &S) {
    let job = JobId::new();
    let mut tasks = tokio::task::JoinSet::new();
    for v in [4_u64, 8, 1, 6, 2, 7, 3, 5] {
        let store = store.clone();
        tasks.spawn(async move { store.put("notion", job, &state(v, &format!("p{v}"))).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("put");
    }
    assert_eq!(store.get("notion", job).await.expect("get"), state(8, "p8"));
}

async fn failures_are_counted_per_sink_job_and_version<S: ConformingStore>(store: &S) {
    let job = JobId::new();
    for expected in 1..=3 {
        assert_eq!(
            store.count_failure("notion", job, 4).await.expect("count"),
            expected
        );
    }
    assert_eq!(
        store.count_failure("notion", job, 5).await.expect("count"),
        1
    );
    assert_eq!(
        store
            .count_failure("slack-bot", job, 4)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .count_failure("notion", JobId::new(), 4)
            .await
            .expect("count"),
        1
    );
    // Counting never touches the sink's state.
    assert_eq!(
        store.get("notion", job).await.expect("get"),
        SinkState::default()
    );
}

async fn dead_letters_merge_repeats_list_oldest_first_and_remove_once<S: ConformingStore>(
    store: &S,
) {
    let before: Vec<i64> = store
        .list(None)
        .await
        .expect("list")
        .iter()
        .map(|l| l.id)
        .collect();
    let job = JobId::new();
    let first = NewDeadLetter {
        sink: "notion-conformance".into(),
        job_id: job,
        version: 2,
        event_id: uuid::Uuid::now_v7(),
        seq: 7,
        error: "notion answered 500 server_error: down".into(),
        tries: 3,
        failed_at: t0(),
    };
    store.add(first.clone()).await.expect("add");
    let second = NewDeadLetter {
        sink: "slack-conformance".into(),
        version: 3,
        event_id: uuid::Uuid::now_v7(),
        failed_at: t0() + chrono::Duration::minutes(1),
        ..first.clone()
    };
    store.add(second.clone()).await.expect("add");
    // The same record failing again (a redrive that failed) is one entry, with the tries added up.
    store
        .add(NewDeadLetter {
            error: "again".into(),
            tries: 1,
            failed_at: t0() + chrono::Duration::minutes(2),
            ..first.clone()
        })
        .await
        .expect("add again");

    let mine = |all: Vec<jobledger_handlers::notify::DeadLetter>| {
        all.into_iter()
            .filter(|l| !before.contains(&l.id))
            .collect::<Vec<_>>()
    };
    let all = mine(store.list(None).await.expect("list"));
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all.iter().map(|l| l.sink.as_str()).collect::<Vec<_>>(),
        ["notion-conformance", "slack-conformance"],
        "oldest first"
    );
    let notion = &all[0];
    assert_eq!(
        (notion.job_id, notion.version, notion.event_id, notion.seq),
        (job, 2, first.event_id, 7)
    );
    assert_eq!((notion.tries, notion.error.as_str()), (4, "again"));
    assert_eq!(notion.failed_at, t0() + chrono::Duration::minutes(2));
    assert_ne!(all[0].id, all[1].id);

    let only = store.list(Some("slack-conformance")).await.expect("list");
    assert_eq!(only.len(), 1);
    assert_eq!((only[0].version, only[0].tries), (3, 3));
    assert!(store.list(Some("nobody")).await.expect("list").is_empty());

    assert!(store.remove(notion.id).await.expect("remove"));
    assert!(!store.remove(notion.id).await.expect("remove twice"));
    let left = mine(store.list(None).await.expect("list"));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].sink, "slack-conformance");
    assert!(store.remove(left[0].id).await.expect("remove"));
}
