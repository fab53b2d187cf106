//! cqrs-es + sqlite-es: the same job life as jobledger's store benchmark — submit, queue,
//! launch, each a command through `CqrsFramework::execute` (load → handle → commit) — and the
//! load of a 10,000-event aggregate. The aggregate enforces the same transitions jobledger's
//! does for these commands, with payloads of similar size.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, DomainEvent, EventStore};
use serde::{Deserialize, Serialize};
use sqlite_es::{SqliteEventRepository, default_sqlite_pool, sqlite_cqrs};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use crate::figures::{Durability, emit};

/// Where a job is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not submitted yet.
    #[default]
    New,
    /// Submitted.
    Submitted,
    /// On the queue.
    Queued,
    /// A task was launched for it.
    Launching,
    /// A worker runs it.
    Running,
}

/// The commands of the benchmark.
#[derive(Clone, Debug)]
pub enum JobCommand {
    /// Submit a no-op job.
    Submit {
        /// Job kind.
        kind: String,
        /// Items to process.
        items: Vec<String>,
        /// Attempts allowed.
        max_attempts: u32,
    },
    /// The dispatcher queued it.
    MarkQueued {
        /// Attempt number.
        attempt: u32,
        /// Queue message id.
        message_id: String,
    },
    /// The launcher started a task.
    RecordLaunch {
        /// Attempt number.
        attempt: u32,
        /// Task id.
        task_arn: String,
    },
    /// Append `count` progress reports at once (to build a long history quickly).
    ReportProgressBatch {
        /// First `done` value.
        from: u64,
        /// How many reports.
        count: u64,
    },
}

/// The events, with payloads shaped like jobledger's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Submitted.
    JobSubmitted {
        /// Job kind.
        kind: String,
        /// Items.
        items: Vec<String>,
        /// Attempts allowed.
        max_attempts: u32,
    },
    /// Queued.
    JobQueued {
        /// Attempt.
        attempt: u32,
        /// Queue message id.
        message_id: String,
    },
    /// Launched.
    TaskLaunched {
        /// Attempt.
        attempt: u32,
        /// Task id.
        task_arn: String,
        /// Capacity.
        capacity: String,
    },
    /// Progress with a checkpoint, ~ the size of jobledger's progress events.
    ProgressReported {
        /// Attempt.
        attempt: u32,
        /// Items done.
        done: u64,
        /// Items in all.
        total: u64,
        /// Checkpoint location.
        checkpoint_uri: String,
    },
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        match self {
            JobEvent::JobSubmitted { .. } => "JobSubmitted",
            JobEvent::JobQueued { .. } => "JobQueued",
            JobEvent::TaskLaunched { .. } => "TaskLaunched",
            JobEvent::ProgressReported { .. } => "ProgressReported",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// A command that is illegal in the job's status.
#[derive(Debug)]
pub struct Rejected(String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

/// The job aggregate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Job {
    /// Status.
    pub status: Status,
    /// Current attempt.
    pub attempt: u32,
    /// Items done.
    pub done: u64,
}

impl Aggregate for Job {
    const TYPE: &'static str = "job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = Rejected;
    type Services = ();

    async fn handle(
        &mut self,
        command: JobCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Rejected> {
        match (self.status, command) {
            (
                Status::New,
                JobCommand::Submit {
                    kind,
                    items,
                    max_attempts,
                },
            ) => {
                sink.write(
                    JobEvent::JobSubmitted {
                        kind,
                        items,
                        max_attempts,
                    },
                    self,
                )
                .await;
            }
            (
                Status::Submitted,
                JobCommand::MarkQueued {
                    attempt,
                    message_id,
                },
            ) => {
                sink.write(
                    JobEvent::JobQueued {
                        attempt,
                        message_id,
                    },
                    self,
                )
                .await;
            }
            (Status::Queued, JobCommand::RecordLaunch { attempt, task_arn })
                if attempt == self.attempt =>
            {
                let capacity = "local".to_string();
                sink.write(
                    JobEvent::TaskLaunched {
                        attempt,
                        task_arn,
                        capacity,
                    },
                    self,
                )
                .await;
            }
            (
                Status::Launching | Status::Running,
                JobCommand::ReportProgressBatch { from, count },
            ) => {
                let total = from + count;
                for done in from..from + count {
                    let checkpoint_uri = format!(
                        "file:///var/lib/jobledger/checkpoints/bench/attempt-1/after-item-{done:08}.json"
                    );
                    let attempt = self.attempt;
                    sink.write(
                        JobEvent::ProgressReported {
                            attempt,
                            done,
                            total,
                            checkpoint_uri,
                        },
                        self,
                    )
                    .await;
                }
            }
            (status, command) => {
                return Err(Rejected(format!("{command:?} is illegal in {status:?}")));
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: JobEvent) {
        match event {
            JobEvent::JobSubmitted { .. } => self.status = Status::Submitted,
            JobEvent::JobQueued { attempt, .. } => {
                self.status = Status::Queued;
                self.attempt = attempt;
            }
            JobEvent::TaskLaunched { .. } => self.status = Status::Launching,
            JobEvent::ProgressReported { done, .. } => {
                self.status = Status::Running;
                self.done = done;
            }
        }
    }
}

/// sqlite-es's tables (from its migration), created here because the crate ships no setup call.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
     sequence integer CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
     event_version text NOT NULL, payload text NOT NULL, metadata text NOT NULL, \
     PRIMARY KEY (aggregate_type, aggregate_id, sequence)) STRICT",
    "CREATE TABLE IF NOT EXISTS snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
     last_sequence integer CHECK (last_sequence >= 0) NOT NULL, \
     current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL, payload text NOT NULL, \
     PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)) STRICT",
];

/// Opens the event database as sqlite-es documents (`default_sqlite_pool`), or the same with
/// `synchronous=FULL`, and creates the tables.
pub async fn open(file: &Path, durability: Durability) -> anyhow::Result<Pool<Sqlite>> {
    let url = format!("sqlite://{}", file.display());
    let pool = match durability {
        Durability::Default => default_sqlite_pool(&url).await,
        Durability::Full => {
            let options = SqliteConnectOptions::from_str(&url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true);
            SqlitePoolOptions::new()
                .max_connections(10)
                .connect_with(options)
                .await?
        }
    };
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok(pool)
}

fn job_commands(client: usize) -> [JobCommand; 3] {
    [
        JobCommand::Submit {
            kind: "noop".into(),
            items: vec!["item-1".into(), "item-2".into(), "item-3".into()],
            max_attempts: 3,
        },
        JobCommand::MarkQueued {
            attempt: 1,
            message_id: format!("bench-message-{client}"),
        },
        JobCommand::RecordLaunch {
            attempt: 1,
            task_arn: "bench-task".into(),
        },
    ]
}

/// `jobs` jobs × 3 commands over `clients` clients, until done or `cap`; emits
/// `cqrs.<durability>.commands.<clients>.per_s`; returns the commands acknowledged.
pub async fn commands(
    clients: usize,
    jobs: usize,
    cap: Duration,
    durability: Durability,
) -> anyhow::Result<usize> {
    let dir = tempfile::tempdir()?;
    let pool = open(&dir.path().join("cqrs.sqlite3"), durability).await?;
    let cqrs = Arc::new(sqlite_cqrs::<Job>(pool, vec![], ()));
    let clients = clients.max(1);
    let per_client = jobs.div_ceil(clients);
    let started = Instant::now();
    let deadline = started + cap;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let cqrs = cqrs.clone();
        let mine = per_client.min(jobs.saturating_sub(client * per_client));
        tasks.spawn(async move {
            let mut acknowledged = 0usize;
            for n in 0..mine {
                if Instant::now() >= deadline {
                    break;
                }
                let id = format!("job-{client}-{n}");
                for command in job_commands(client) {
                    let metadata =
                        HashMap::from([("actor".to_string(), format!("api-key:bench-{client}"))]);
                    cqrs.execute_with_metadata(&id, command, metadata)
                        .await
                        .map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                    acknowledged += 1;
                }
            }
            Ok::<_, anyhow::Error>(acknowledged)
        });
    }
    let mut acknowledged = 0;
    while let Some(joined) = tasks.join_next().await {
        acknowledged += joined??;
    }
    let secs = started.elapsed().as_secs_f64();
    let k = format!("cqrs.{}.commands.{clients}", durability.key());
    emit(format!("{k}.per_s"), acknowledged as f64 / secs);
    emit(format!("{k}.done"), acknowledged as f64);
    Ok(acknowledged)
}

/// Builds a 10,000-event aggregate (3 commands, then progress in batches of 500), then times
/// `loads` loads of it through the event store; emits the median as `cqrs.<durability>.load10k.ms`.
pub async fn load(loads: usize, durability: Durability) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pool = open(&dir.path().join("cqrs.sqlite3"), durability).await?;
    let cqrs = sqlite_cqrs::<Job>(pool.clone(), vec![], ());
    let id = "long-job";
    for command in job_commands(0) {
        cqrs.execute(id, command)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut from = 1;
    while from <= 9_997 {
        let count = 500.min(9_997 - from + 1);
        cqrs.execute(id, JobCommand::ReportProgressBatch { from, count })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        from += count;
    }
    let store = PersistedEventStore::<_, Job>::new_event_store(SqliteEventRepository::new(pool));
    let mut times = Vec::new();
    for _ in 0..loads.max(1) {
        let started = Instant::now();
        let mut context = store
            .load_aggregate(id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(started.elapsed());
        let job = context.aggregate();
        anyhow::ensure!(
            job.status == Status::Running && job.done == 9_997,
            "loaded {job:?}, expected RUNNING after 9,997 progress reports"
        );
    }
    times.sort();
    emit(
        format!("cqrs.{}.load10k.ms", durability.key()),
        times[(times.len() - 1) / 2].as_secs_f64() * 1e3,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn submitted() -> JobEvent {
        JobEvent::JobSubmitted {
            kind: "noop".into(),
            items: vec!["a".into()],
            max_attempts: 3,
        }
    }

    fn queued() -> JobEvent {
        JobEvent::JobQueued {
            attempt: 1,
            message_id: "m".into(),
        }
    }

    #[test]
    fn a_submitted_job_can_be_queued() {
        TestFramework::<Job>::with(())
            .given(vec![submitted()])
            .when(JobCommand::MarkQueued {
                attempt: 1,
                message_id: "m".into(),
            })
            .then_expect_events(vec![queued()]);
    }

    #[test]
    fn a_job_cannot_be_launched_before_it_is_queued() {
        TestFramework::<Job>::with(())
            .given(vec![submitted()])
            .when(JobCommand::RecordLaunch {
                attempt: 1,
                task_arn: "t".into(),
            })
            .then_expect_error_message(
                "RecordLaunch { attempt: 1, task_arn: \"t\" } is illegal in Submitted",
            );
    }

    #[test]
    fn a_launch_for_another_attempt_is_rejected() {
        let result = TestFramework::<Job>::with(())
            .given(vec![submitted(), queued()])
            .when(JobCommand::RecordLaunch {
                attempt: 2,
                task_arn: "t".into(),
            })
            .inspect_result();
        assert!(result.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_command_is_acknowledged_at_both_durabilities() {
        for durability in [Durability::Default, Durability::Full] {
            let acknowledged = commands(4, 20, Duration::from_secs(60), durability)
                .await
                .expect("commands run");
            assert_eq!(acknowledged, 60, "{durability:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_aggregate_loads_back_into_its_state() {
        // `load` checks the folded state itself and fails if it is not RUNNING at 9,997.
        load(1, Durability::Full)
            .await
            .expect("load of 10,000 events");
    }
}
