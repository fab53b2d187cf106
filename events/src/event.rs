//! Job events: past-tense facts, each with a type name and a payload schema version.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spec::JobSpec;

/// Where a worker ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capacity {
    /// Fargate Spot (cheap, may be interrupted).
    #[serde(rename = "FARGATE_SPOT")]
    FargateSpot,
    /// Fargate on demand.
    #[serde(rename = "FARGATE")]
    Fargate,
    /// In-process or child process on the local machine (`jobledger dev`).
    #[serde(rename = "local")]
    Local,
}

/// What an attempt used and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// vCPUs of the task.
    pub vcpu: f64,
    /// Memory of the task.
    pub memory_mb: u64,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Model input tokens, all items.
    pub input_tokens: u64,
    /// Model output tokens, all items.
    pub output_tokens: u64,
    /// The model used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Compute plus model cost.
    pub cost_usd: f64,
}

/// `JobQueued` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The attempt the message is for.
    pub attempt: u32,
    /// The queue's message id.
    pub message_id: String,
}

/// `TaskLaunched` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launched {
    /// The attempt launched.
    pub attempt: u32,
    /// ECS task ARN, or a local task id.
    pub task_arn: String,
    /// Where it runs.
    pub capacity: Capacity,
}

/// `LaunchFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchFailure {
    /// The attempt that could not be launched.
    pub attempt: u32,
    /// Why.
    pub reason: String,
    /// Whether trying again may help.
    pub retryable: bool,
}

/// `AttemptStarted` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    /// The attempt.
    pub attempt: u32,
    /// The worker's identity (task id, host).
    pub worker: String,
}

/// `ProgressReported` payload (schema 2; schema 1 had no `failed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt.
    pub attempt: u32,
    /// Items done successfully so far.
    pub done: u64,
    /// Items failed so far.
    pub failed: u64,
    /// Items in the job.
    pub total: u64,
    /// Where the attempt's checkpoint is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_uri: Option<String>,
}

/// `AttemptFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// The attempt.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may help.
    pub retryable: bool,
}

/// `WorkerInterrupted` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interrupted {
    /// The attempt.
    pub attempt: u32,
    /// e.g. `SpotInterruption`, `SIGTERM`.
    pub reason: String,
}

/// `AttemptTimedOut` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedOut {
    /// The attempt.
    pub attempt: u32,
}

/// `RetryScheduled` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryScheduled {
    /// The attempt that will run next.
    pub next_attempt: u32,
    /// Not to be launched before this time (backoff with jitter).
    pub not_before: DateTime<Utc>,
}

/// `JobSucceeded` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Succeeded {
    /// The attempt that finished.
    pub attempt: u32,
    /// Where the JSONL results are.
    pub result_uri: String,
    /// SHA-256 (hex) of the results file.
    pub result_sha256: String,
    /// Items that produced a result.
    pub items_ok: u64,
    /// Items recorded as failed (with a reason, in the results).
    pub items_failed: u64,
    /// What the attempt used and cost.
    pub usage: Usage,
}

/// `JobFailed` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// Why the job gave up.
    pub reason: String,
}

/// `CancelRequested` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelRequested {
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `JobCancelled` payload (empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {}

/// Every job event.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// A client submitted the job.
    JobSubmitted(JobSpec),
    /// An attempt was put on the work queue.
    JobQueued(Queued),
    /// A worker task was started for an attempt.
    TaskLaunched(Launched),
    /// A worker task could not be started.
    LaunchFailed(LaunchFailure),
    /// The worker claimed the attempt.
    AttemptStarted(Started),
    /// The worker reported progress (also its heartbeat).
    ProgressReported(Progress),
    /// The attempt failed.
    AttemptFailed(AttemptFailure),
    /// The worker was stopped from outside (Spot reclaim, SIGTERM); does not use up an attempt.
    WorkerInterrupted(Interrupted),
    /// The attempt ran past its timeout or lost its heartbeat.
    AttemptTimedOut(TimedOut),
    /// Another attempt will run.
    RetryScheduled(RetryScheduled),
    /// The job finished with results.
    JobSucceeded(Succeeded),
    /// The job gave up.
    JobFailed(Failed),
    /// Someone asked to cancel a running job.
    CancelRequested(CancelRequested),
    /// The job was cancelled.
    JobCancelled(Cancelled),
}

/// An event's payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The type name is not a job event.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The schema version is newer than this build knows, or has no upcaster.
    #[error("{event_type} schema {schema} is not supported (current is {current})")]
    UnknownSchema {
        /// The event type.
        event_type: String,
        /// The stored schema.
        schema: u32,
        /// The newest schema this build knows.
        current: u32,
    },
    /// The payload does not match the type.
    #[error("{event_type} payload is invalid: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl JobEvent {
    /// The type name stored in the envelope.
    pub fn event_type(&self) -> &'static str {
        match self {
            JobEvent::JobSubmitted(_) => "JobSubmitted",
            JobEvent::JobQueued(_) => "JobQueued",
            JobEvent::TaskLaunched(_) => "TaskLaunched",
            JobEvent::LaunchFailed(_) => "LaunchFailed",
            JobEvent::AttemptStarted(_) => "AttemptStarted",
            JobEvent::ProgressReported(_) => "ProgressReported",
            JobEvent::AttemptFailed(_) => "AttemptFailed",
            JobEvent::WorkerInterrupted(_) => "WorkerInterrupted",
            JobEvent::AttemptTimedOut(_) => "AttemptTimedOut",
            JobEvent::RetryScheduled(_) => "RetryScheduled",
            JobEvent::JobSucceeded(_) => "JobSucceeded",
            JobEvent::JobFailed(_) => "JobFailed",
            JobEvent::CancelRequested(_) => "CancelRequested",
            JobEvent::JobCancelled(_) => "JobCancelled",
        }
    }

    /// The payload schema version written for new events of this type.
    pub fn schema(&self) -> u32 {
        current_schema(self.event_type())
    }

    /// Whether this event ends the job (nothing legal may follow but a manual retry).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::JobSucceeded(_) | JobEvent::JobFailed(_) | JobEvent::JobCancelled(_)
        )
    }

    /// The payload as a JSON value.
    pub fn to_data(&self) -> serde_json::Value {
        let value = match self {
            JobEvent::JobSubmitted(p) => serde_json::to_value(p),
            JobEvent::JobQueued(p) => serde_json::to_value(p),
            JobEvent::TaskLaunched(p) => serde_json::to_value(p),
            JobEvent::LaunchFailed(p) => serde_json::to_value(p),
            JobEvent::AttemptStarted(p) => serde_json::to_value(p),
            JobEvent::ProgressReported(p) => serde_json::to_value(p),
            JobEvent::AttemptFailed(p) => serde_json::to_value(p),
            JobEvent::WorkerInterrupted(p) => serde_json::to_value(p),
            JobEvent::AttemptTimedOut(p) => serde_json::to_value(p),
            JobEvent::RetryScheduled(p) => serde_json::to_value(p),
            JobEvent::JobSucceeded(p) => serde_json::to_value(p),
            JobEvent::JobFailed(p) => serde_json::to_value(p),
            JobEvent::CancelRequested(p) => serde_json::to_value(p),
            JobEvent::JobCancelled(p) => serde_json::to_value(p),
        };
        // Payloads are plain structs of strings, numbers and maps: serialising cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Decodes a payload of the current schema from JSON text.
    pub fn decode_current(event_type: &str, data: &str) -> Result<JobEvent, DecodeError> {
        decode_from(event_type, &mut WholeText(data))
    }

    /// Decodes a payload of the current schema that starts `text` and may be followed by more
    /// (the rest of a stored envelope); returns the event and the payload's length in bytes.
    ///
    /// One pass over the payload, with no copy of its text: a replay reads it straight out of the
    /// line (what follows the payload need not even be UTF-8). The value must start at the first
    /// byte. A parse error's position counts from the start of `text`, so callers reporting
    /// errors decode the payload alone instead.
    pub fn decode_current_prefix(
        event_type: &str,
        text: &[u8],
    ) -> Result<(JobEvent, usize), DecodeError> {
        let mut prefix = Prefix { text, len: 0 };
        let event = decode_from(event_type, &mut prefix)?;
        Ok((event, prefix.len))
    }

    /// The attempt an event belongs to, if it is about one.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            JobEvent::JobQueued(p) => Some(p.attempt),
            JobEvent::TaskLaunched(p) => Some(p.attempt),
            JobEvent::LaunchFailed(p) => Some(p.attempt),
            JobEvent::AttemptStarted(p) => Some(p.attempt),
            JobEvent::ProgressReported(p) => Some(p.attempt),
            JobEvent::AttemptFailed(p) => Some(p.attempt),
            JobEvent::WorkerInterrupted(p) => Some(p.attempt),
            JobEvent::AttemptTimedOut(p) => Some(p.attempt),
            JobEvent::RetryScheduled(p) => Some(p.next_attempt),
            JobEvent::JobSucceeded(p) => Some(p.attempt),
            _ => None,
        }
    }
}

/// Where a payload is parsed from: a whole text, or the start of a longer one.
trait PayloadText {
    fn parse<T: DeserializeOwned>(&mut self) -> serde_json::Result<T>;

    /// The payload read by [`canonical::decode`], when it is in the one spelling that reader knows.
    fn canonical(&mut self, event_type: &str) -> Option<JobEvent>;
}

/// A payload that is the whole text (trailing whitespace allowed, nothing else).
struct WholeText<'a>(&'a str);

impl PayloadText for WholeText<'_> {
    fn parse<T: DeserializeOwned>(&mut self) -> serde_json::Result<T> {
        serde_json::from_str(self.0)
    }

    fn canonical(&mut self, event_type: &str) -> Option<JobEvent> {
        canonical::decode(event_type, self.0.as_bytes())
            .and_then(|(event, len)| (len == self.0.len()).then_some(event))
    }
}

/// A payload at the start of a longer text; `len` is set to its length once parsed.
struct Prefix<'a> {
    text: &'a [u8],
    len: usize,
}

impl PayloadText for Prefix<'_> {
    fn parse<T: DeserializeOwned>(&mut self) -> serde_json::Result<T> {
        // A stream deserializer stops after one value and says where: no scan for the end first.
        let mut values = serde_json::Deserializer::from_slice(self.text).into_iter::<T>();
        match values.next() {
            Some(value) => {
                let value = value?;
                self.len = values.byte_offset();
                Ok(value)
            }
            // Only whitespace: let the parser phrase the error.
            None => serde_json::from_slice(self.text),
        }
    }

    fn canonical(&mut self, event_type: &str) -> Option<JobEvent> {
        let (event, len) = canonical::decode(event_type, self.text)?;
        self.len = len;
        Some(event)
    }
}

/// The one table from type names to payload types.
fn decode_from(event_type: &str, text: &mut impl PayloadText) -> Result<JobEvent, DecodeError> {
    if let Some(event) = text.canonical(event_type) {
        return Ok(event);
    }
    let payload = |source| DecodeError::Payload {
        event_type: event_type.to_string(),
        source,
    };
    Ok(match event_type {
        "JobSubmitted" => JobEvent::JobSubmitted(text.parse().map_err(payload)?),
        "JobQueued" => JobEvent::JobQueued(text.parse().map_err(payload)?),
        "TaskLaunched" => JobEvent::TaskLaunched(text.parse().map_err(payload)?),
        "LaunchFailed" => JobEvent::LaunchFailed(text.parse().map_err(payload)?),
        "AttemptStarted" => JobEvent::AttemptStarted(text.parse().map_err(payload)?),
        "ProgressReported" => JobEvent::ProgressReported(text.parse().map_err(payload)?),
        "AttemptFailed" => JobEvent::AttemptFailed(text.parse().map_err(payload)?),
        "WorkerInterrupted" => JobEvent::WorkerInterrupted(text.parse().map_err(payload)?),
        "AttemptTimedOut" => JobEvent::AttemptTimedOut(text.parse().map_err(payload)?),
        "RetryScheduled" => JobEvent::RetryScheduled(text.parse().map_err(payload)?),
        "JobSucceeded" => JobEvent::JobSucceeded(text.parse().map_err(payload)?),
        "JobFailed" => JobEvent::JobFailed(text.parse().map_err(payload)?),
        "CancelRequested" => JobEvent::CancelRequested(text.parse().map_err(payload)?),
        "JobCancelled" => JobEvent::JobCancelled(text.parse().map_err(payload)?),
        other => return Err(DecodeError::UnknownType(other.to_string())),
    })
}

/// A reader of payloads in canonical form (RFC 8785, as the ledger writes them), much cheaper
/// than serde's derived readers: it walks the one spelling the writer produces (keys sorted,
/// no whitespace, strings with nothing to unescape, integers in plain digits) and gives up on
/// anything else, which then goes to serde. On every text it accepts, serde reads the same event
/// (it uses serde itself for what it does not spell out: floats, times, metadata), which the
/// tests check on every generated payload and on mutated ones.
mod canonical {
    use chrono::{DateTime, FixedOffset, Utc};

    use super::*;
    use crate::spec::{Item, JobInput, JobKind, Notify};

    /// The payload of type `event_type` at the start of `text`, and its length.
    pub(super) fn decode(event_type: &str, text: &[u8]) -> Option<(JobEvent, usize)> {
        let mut r = Reader { text, at: 0 };
        let event = match event_type {
            "JobSubmitted" => JobEvent::JobSubmitted(r.spec()?),
            "JobQueued" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let message_id = r.string_after(b",\"message_id\":")?;
                JobEvent::JobQueued(Queued {
                    attempt,
                    message_id,
                })
            }
            "TaskLaunched" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                r.lit(b",\"capacity\":")?;
                let capacity = r.capacity()?;
                let task_arn = r.string_after(b",\"task_arn\":")?;
                JobEvent::TaskLaunched(Launched {
                    attempt,
                    task_arn,
                    capacity,
                })
            }
            "LaunchFailed" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let reason = r.string_after(b",\"reason\":")?;
                r.lit(b",\"retryable\":")?;
                JobEvent::LaunchFailed(LaunchFailure {
                    attempt,
                    reason,
                    retryable: r.bool()?,
                })
            }
            "AttemptStarted" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let worker = r.string_after(b",\"worker\":")?;
                JobEvent::AttemptStarted(Started { attempt, worker })
            }
            "ProgressReported" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let checkpoint_uri = r.optional(b",\"checkpoint_uri\":")?;
                r.lit(b",\"done\":")?;
                let done = r.u64()?;
                r.lit(b",\"failed\":")?;
                let failed = r.u64()?;
                r.lit(b",\"total\":")?;
                JobEvent::ProgressReported(Progress {
                    attempt,
                    done,
                    failed,
                    total: r.u64()?,
                    checkpoint_uri,
                })
            }
            "AttemptFailed" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let error = r.string_after(b",\"error\":")?;
                r.lit(b",\"retryable\":")?;
                JobEvent::AttemptFailed(AttemptFailure {
                    attempt,
                    error,
                    retryable: r.bool()?,
                })
            }
            "WorkerInterrupted" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                let reason = r.string_after(b",\"reason\":")?;
                JobEvent::WorkerInterrupted(Interrupted { attempt, reason })
            }
            "AttemptTimedOut" => JobEvent::AttemptTimedOut(TimedOut {
                attempt: r.first_u32(b"{\"attempt\":")?,
            }),
            "RetryScheduled" => {
                let next_attempt = r.first_u32(b"{\"next_attempt\":")?;
                r.lit(b",\"not_before\":")?;
                JobEvent::RetryScheduled(RetryScheduled {
                    next_attempt,
                    not_before: r.time()?,
                })
            }
            "JobSucceeded" => {
                let attempt = r.first_u32(b"{\"attempt\":")?;
                r.lit(b",\"items_failed\":")?;
                let items_failed = r.u64()?;
                r.lit(b",\"items_ok\":")?;
                let items_ok = r.u64()?;
                let result_sha256 = r.string_after(b",\"result_sha256\":")?;
                let result_uri = r.string_after(b",\"result_uri\":")?;
                r.lit(b",\"usage\":")?;
                JobEvent::JobSucceeded(Succeeded {
                    attempt,
                    result_uri,
                    result_sha256,
                    items_ok,
                    items_failed,
                    usage: r.usage()?,
                })
            }
            "JobFailed" => JobEvent::JobFailed(Failed {
                reason: r.string_after(b"{\"reason\":")?,
            }),
            "CancelRequested" => JobEvent::CancelRequested(CancelRequested {
                reason: r.string_after(b"{\"reason\":")?,
            }),
            "JobCancelled" => {
                r.lit(b"{")?;
                JobEvent::JobCancelled(Cancelled {})
            }
            _ => return None,
        };
        r.lit(b"}")?;
        Some((event, r.at))
    }

    /// A position in the text, advanced by each successful read.
    struct Reader<'a> {
        text: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn rest(&self) -> &'a [u8] {
            &self.text[self.at..]
        }

        fn next_is<const N: usize>(&self, s: &[u8; N]) -> bool {
            self.rest().first_chunk::<N>() == Some(s)
        }

        /// A fixed piece of text.
        fn lit<const N: usize>(&mut self, s: &[u8; N]) -> Option<()> {
            self.next_is(s).then(|| self.at += N)
        }

        /// `key` (which opens the object), then a `u32`.
        fn first_u32<const N: usize>(&mut self, key: &[u8; N]) -> Option<u32> {
            self.lit(key)?;
            self.u32()
        }

        /// `key`, then a string.
        fn string_after<const N: usize>(&mut self, key: &[u8; N]) -> Option<String> {
            self.lit(key)?;
            self.string()
        }

        /// Plain digits, no leading zero; `None` past `u64::MAX` (serde refuses those too).
        fn u64(&mut self) -> Option<u64> {
            let digits = self
                .rest()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let text = &self.rest()[..digits];
            if digits == 0 || (digits > 1 && text[0] == b'0') {
                return None;
            }
            let n = text.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })?;
            self.at += digits;
            Some(n)
        }

        fn u32(&mut self) -> Option<u32> {
            u32::try_from(self.u64()?).ok()
        }

        fn i32(&mut self) -> Option<i32> {
            let negative = self.rest().first() == Some(&b'-');
            self.at += usize::from(negative);
            let n = i64::try_from(self.u64()?).ok()?;
            // serde_json reads `-0` as the float -0.0, which no integer field accepts.
            if negative && n == 0 {
                return None;
            }
            i32::try_from(if negative { -n } else { n }).ok()
        }

        /// A number read by serde_json itself (its float reading is not `str::parse`'s).
        fn f64(&mut self) -> Option<f64> {
            let len = self
                .rest()
                .iter()
                .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .count();
            let n = serde_json::from_slice(&self.rest()[..len]).ok()?;
            self.at += len;
            Some(n)
        }

        fn bool(&mut self) -> Option<bool> {
            if self.lit(b"true").is_some() {
                return Some(true);
            }
            self.lit(b"false").map(|()| false)
        }

        /// A string with nothing to unescape (no backslash, no control character).
        fn str(&mut self) -> Option<&'a str> {
            let rest = self.rest();
            if rest.first() != Some(&b'"') {
                return None;
            }
            let len = crate::envelope::plain_str_len(&rest[1..], false)?;
            let s = std::str::from_utf8(&rest[1..1 + len]).ok()?;
            self.at += len + 2;
            Some(s)
        }

        fn string(&mut self) -> Option<String> {
            self.str().map(str::to_owned)
        }

        /// An RFC 3339 time, read as chrono's serde impl reads it.
        fn time(&mut self) -> Option<DateTime<Utc>> {
            let at = self.str()?.parse::<DateTime<FixedOffset>>().ok()?;
            Some(at.with_timezone(&Utc))
        }

        fn capacity(&mut self) -> Option<Capacity> {
            match self.str()? {
                "FARGATE_SPOT" => Some(Capacity::FargateSpot),
                "FARGATE" => Some(Capacity::Fargate),
                "local" => Some(Capacity::Local),
                _ => None,
            }
        }

        /// `key`, then an optional string field (absent, never `null`, in canonical form).
        fn optional<const N: usize>(&mut self, key: &[u8; N]) -> Option<Option<String>> {
            if !self.next_is(key) {
                return Some(None);
            }
            self.string_after(key).map(Some)
        }

        fn usage(&mut self) -> Option<Usage> {
            self.lit(b"{")?;
            let capacity = if self.next_is(b"\"capacity\":") {
                self.lit(b"\"capacity\":")?;
                let capacity = self.capacity()?;
                self.lit(b",")?;
                Some(capacity)
            } else {
                None
            };
            self.lit(b"\"cost_usd\":")?;
            let cost_usd = self.f64()?;
            self.lit(b",\"duration_ms\":")?;
            let duration_ms = self.u64()?;
            self.lit(b",\"input_tokens\":")?;
            let input_tokens = self.u64()?;
            self.lit(b",\"memory_mb\":")?;
            let memory_mb = self.u64()?;
            let model = self.optional(b",\"model\":")?;
            self.lit(b",\"output_tokens\":")?;
            let output_tokens = self.u64()?;
            self.lit(b",\"vcpu\":")?;
            let vcpu = self.f64()?;
            self.lit(b"}")?;
            Some(Usage {
                duration_ms,
                vcpu,
                memory_mb,
                capacity,
                input_tokens,
                output_tokens,
                model,
                cost_usd,
            })
        }

        /// An object's first key: `{"key":`, when it is `key`.
        fn first_key<const N: usize>(&mut self, key: &[u8; N]) -> bool {
            self.next_is(key) && self.lit(key).is_some()
        }

        /// A `JobSpec` (keys sorted: the input's form falls between `idempotency_key` and `kind`),
        /// without the field's closing brace.
        fn spec(&mut self) -> Option<JobSpec> {
            self.lit(b"{")?;
            let idempotency_key = if self.first_key(b"\"idempotency_key\":") {
                let key = self.string()?;
                self.lit(b",")?;
                Some(key)
            } else {
                None
            };
            let input = if self.first_key(b"\"input_uri\":") {
                JobInput::Uri {
                    input_uri: self.string()?,
                }
            } else {
                self.lit(b"\"items\":[")?;
                let mut items = Vec::new();
                if self.lit(b"]").is_none() {
                    loop {
                        items.push(self.item()?);
                        if self.lit(b"]").is_some() {
                            break;
                        }
                        self.lit(b",")?;
                    }
                }
                JobInput::Items { items }
            };
            self.lit(b",\"kind\":")?;
            let kind = JobKind::parse(self.str()?)?;
            self.lit(b",\"max_attempts\":")?;
            let max_attempts = self.u32()?;
            let max_tokens = if self.next_is(b",\"max_tokens\":") {
                self.lit(b",\"max_tokens\":")?;
                Some(self.u64()?)
            } else {
                None
            };
            self.lit(b",\"metadata\":")?;
            let metadata = self.metadata()?;
            self.lit(b",\"notify\":{\"notion\":")?;
            let notion = self.bool()?;
            self.lit(b",\"slack\":")?;
            let slack = self.bool()?;
            self.lit(b"},\"priority\":")?;
            let priority = self.i32()?;
            self.lit(b",\"timeout_s\":")?;
            let timeout_s = self.u32()?;
            Some(JobSpec {
                kind,
                input,
                max_attempts,
                timeout_s,
                priority,
                notify: Notify { slack, notion },
                metadata,
                idempotency_key,
                max_tokens,
            })
        }

        /// An inline item (keys sorted: `html`, `id`, `image_base64`, `text`, `uri`).
        fn item(&mut self) -> Option<Item> {
            self.lit(b"{")?;
            let html = if self.first_key(b"\"html\":") {
                let html = self.string()?;
                self.lit(b",")?;
                Some(html)
            } else {
                None
            };
            let id = self.string_after(b"\"id\":")?;
            let image_base64 = self.optional(b",\"image_base64\":")?;
            let text = self.optional(b",\"text\":")?;
            let uri = self.optional(b",\"uri\":")?;
            self.lit(b"}")?;
            Some(Item {
                id,
                text,
                html,
                image_base64,
                uri,
            })
        }

        /// Caller metadata: free-form, so serde reads it unless it is empty.
        fn metadata(&mut self) -> Option<serde_json::Map<String, serde_json::Value>> {
            if self.lit(b"{}").is_some() {
                return Some(serde_json::Map::new());
            }
            if !self.next_is(b"{") {
                return None;
            }
            let mut values = serde_json::Deserializer::from_slice(self.rest())
                .into_iter::<serde_json::Map<String, serde_json::Value>>();
            let map = values.next()?.ok()?;
            self.at += values.byte_offset();
            Some(map)
        }
    }
}

/// The schema version new events of a type are written with.
pub fn current_schema(event_type: &str) -> u32 {
    match event_type {
        "ProgressReported" => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::spec::{Item, JobInput, JobKind, Notify};

    /// Serde's derived readers alone, which the canonical reader must agree with.
    struct SerdeOnly<'a>(&'a str);

    impl PayloadText for SerdeOnly<'_> {
        fn parse<T: DeserializeOwned>(&mut self) -> serde_json::Result<T> {
            serde_json::from_str(self.0)
        }

        fn canonical(&mut self, _: &str) -> Option<JobEvent> {
            None
        }
    }

    fn serde_only(event_type: &str, text: &str) -> Option<JobEvent> {
        decode_from(event_type, &mut SerdeOnly(text)).ok()
    }

    /// One event of every type, with and without each optional field.
    fn samples() -> Vec<JobEvent> {
        let at = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap()
            + chrono::Duration::microseconds(891);
        let usage = |capacity, model: Option<&str>| Usage {
            duration_ms: 284_000,
            vcpu: 0.25,
            memory_mb: 512,
            capacity,
            input_tokens: 100,
            output_tokens: 20,
            model: model.map(str::to_owned),
            cost_usd: 0.0017000000000000001,
        };
        let spec = |input,
                    idempotency_key: Option<&str>,
                    max_tokens,
                    metadata: serde_json::Value| JobSpec {
            kind: JobKind::MetaDescription,
            input,
            max_attempts: 3,
            timeout_s: 3600,
            priority: -7,
            notify: Notify {
                slack: false,
                notion: true,
            },
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            idempotency_key: idempotency_key.map(str::to_owned),
            max_tokens,
        };
        let items = vec![
            Item {
                id: "a".into(),
                text: Some("t é".into()),
                ..Item::default()
            },
            Item {
                id: "b".into(),
                html: Some("<p>".into()),
                image_base64: Some("AAAA".into()),
                uri: Some("s3://b/k".into()),
                ..Item::default()
            },
        ];
        vec![
            JobEvent::JobSubmitted(spec(
                JobInput::Items { items },
                None,
                None,
                serde_json::json!({}),
            )),
            JobEvent::JobSubmitted(spec(
                JobInput::Uri {
                    input_uri: "s3://b/in.jsonl".into(),
                },
                Some("key-1"),
                Some(5000),
                serde_json::json!({"n": 1.5, "s": "x", "z": [true, null, {"a": -3}]}),
            )),
            JobEvent::JobSubmitted(spec(
                JobInput::Items { items: vec![] },
                None,
                None,
                serde_json::json!({}),
            )),
            JobEvent::JobQueued(Queued {
                attempt: 2,
                message_id: "msg-1".into(),
            }),
            JobEvent::TaskLaunched(Launched {
                attempt: 1,
                task_arn: "arn:x".into(),
                capacity: Capacity::Local,
            }),
            JobEvent::TaskLaunched(Launched {
                attempt: 1,
                task_arn: "arn:x".into(),
                capacity: Capacity::Fargate,
            }),
            JobEvent::LaunchFailed(LaunchFailure {
                attempt: 1,
                reason: "no capacity".into(),
                retryable: true,
            }),
            JobEvent::AttemptStarted(Started {
                attempt: 4_000_000_000,
                worker: "w".into(),
            }),
            JobEvent::ProgressReported(Progress {
                attempt: 1,
                done: 3,
                failed: 0,
                total: 9_007_199_254_740_991,
                checkpoint_uri: None,
            }),
            JobEvent::ProgressReported(Progress {
                attempt: 1,
                done: 3,
                failed: 1,
                total: 10,
                checkpoint_uri: Some("s3://c".into()),
            }),
            JobEvent::AttemptFailed(AttemptFailure {
                attempt: 1,
                error: "boom".into(),
                retryable: false,
            }),
            JobEvent::WorkerInterrupted(Interrupted {
                attempt: 1,
                reason: "SIGTERM".into(),
            }),
            JobEvent::AttemptTimedOut(TimedOut { attempt: 3 }),
            JobEvent::RetryScheduled(RetryScheduled {
                next_attempt: 2,
                not_before: at,
            }),
            JobEvent::JobSucceeded(Succeeded {
                attempt: 1,
                result_uri: "s3://r".into(),
                result_sha256: "ab".repeat(32),
                items_ok: 1,
                items_failed: 0,
                usage: usage(Some(Capacity::FargateSpot), Some("builtin")),
            }),
            JobEvent::JobSucceeded(Succeeded {
                attempt: 1,
                result_uri: "s3://r".into(),
                result_sha256: String::new(),
                items_ok: 0,
                items_failed: 2,
                usage: Usage {
                    vcpu: 1e-7,
                    cost_usd: 1e21,
                    ..usage(None, None)
                },
            }),
            JobEvent::JobFailed(Failed {
                reason: "gave up".into(),
            }),
            JobEvent::CancelRequested(CancelRequested {
                reason: String::new(),
            }),
            JobEvent::JobCancelled(Cancelled {}),
        ]
    }

    #[test]
    fn the_canonical_reader_reads_every_canonical_payload_as_serde_does() {
        for event in samples() {
            let text = crate::chain::canonical_json(&event.to_data());
            let (read, len) = canonical::decode(event.event_type(), text.as_bytes())
                .unwrap_or_else(|| panic!("canonical reader refused {text}"));
            assert_eq!(len, text.len(), "{text}");
            assert_eq!(read, event, "{text}");
            assert_eq!(serde_only(event.event_type(), &text), Some(event), "{text}");
        }
    }

    #[test]
    fn a_mutated_payload_is_either_refused_or_read_as_serde_reads_it() {
        let samples: Vec<(JobEvent, String)> = samples()
            .into_iter()
            .map(|e| {
                let text = crate::chain::canonical_json(&e.to_data());
                (e, text)
            })
            .collect();
        let alphabet = b"0123456789-+.eE\"\\{}[],: abcxnultrf";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..40_000 {
            let (event, text) = &samples[next(samples.len())];
            let mut bytes = text.clone().into_bytes();
            let i = next(bytes.len());
            match next(3) {
                0 => bytes[i] = alphabet[next(alphabet.len())],
                1 => bytes.insert(i, alphabet[next(alphabet.len())]),
                _ => {
                    bytes.remove(i);
                }
            }
            let Ok(mutated) = String::from_utf8(bytes) else {
                continue;
            };
            let event_type = event.event_type();
            match canonical::decode(event_type, mutated.as_bytes()) {
                Some((read, len)) => {
                    accepted += 1;
                    assert_eq!(
                        serde_only(event_type, &mutated[..len]).as_ref(),
                        Some(&read),
                        "{mutated}"
                    );
                }
                None => refused += 1,
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// `JobSpec`'s own impl, which `JobSubmitted` decoding must match exactly.
    fn own(text: &str) -> Result<JobEvent, String> {
        serde_json::from_str::<JobSpec>(text)
            .map(JobEvent::JobSubmitted)
            .map_err(|e| format!("JobSubmitted payload is invalid: {e}"))
    }

    #[test]
    fn a_submitted_payload_decodes_as_the_spec_s_own_impl_decodes_it() {
        let base = r#""kind":"noop","max_attempts":3,"timeout_s":60"#;
        let cases = [
            format!(r#"{{{base},"items":[{{"id":"a","text":"x"}}]}}"#),
            format!(r#"{{{base},"input_uri":"s3://b/k"}}"#),
            format!(
                r#"{{"items":[{{"id":"a"}}],{base},"metadata":{{"k":[1,2.5]}},"notify":{{"slack":false}},"priority":-2,"idempotency_key":"i","max_tokens":9}}"#
            ),
            // Both forms: the untagged input picks the items.
            format!(r#"{{{base},"items":[{{"id":"a"}}],"input_uri":"s3://b/k"}}"#),
            // Neither, or only a null: no variant matches.
            format!(r#"{{{base}}}"#),
            format!(r#"{{{base},"items":null}}"#),
            format!(r#"{{{base},"items":null,"input_uri":"s3://b/k"}}"#),
            format!(r#"{{{base},"items":"x","input_uri":"s3://b/k"}}"#),
            format!(r#"{{{base},"input_uri":"s3://b/k","unknown":{{"x":1}}}}"#),
            format!(r#"{{{base},"input_uri":"s3://b/k","kind":"noop"}}"#),
            format!(r#"{{{base},"input_uri":"s3://b/k","input_uri":"s3://b/j"}}"#),
            format!(r#"{{{base},"input_uri":7}}"#),
            format!(r#"  {{{base},"input_uri":"s3://b/k"}}  "#),
            r#"["noop",{"input_uri":"s3://b/k"},3,60,0,{"slack":true,"notion":true},{},null,null]"#
                .to_string(),
            r#"{"kind":"noop","input_uri":"s3://b/k"}"#.to_string(),
            "null".to_string(),
        ];
        for text in cases {
            let whole = JobEvent::decode_current("JobSubmitted", &text).map_err(|e| e.to_string());
            assert_eq!(whole, own(&text), "{text}");
            let longer = format!("{text},\"at\":1}}");
            match JobEvent::decode_current_prefix("JobSubmitted", longer.as_bytes()) {
                Ok((event, len)) => {
                    assert_eq!(Ok(event), own(&text), "{text}");
                    assert_eq!(len, text.trim_end().len(), "{text}");
                }
                Err(_) => assert!(own(&text).is_err(), "{text}"),
            }
        }
    }
}
