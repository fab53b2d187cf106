//! One `events` row: the packed `envelope` record, and reading a row either into a
//! `RecordedEvent` (`load`, the feed, replay) or, borrowed and without copying, into a job's fold
//! (`load_job`).

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::envelope::{Hash, RecordedEvent};
use crate::event::JobEvent;
use crate::ids::JobId;
use crate::store::{JobHead, StoreError};

/// The first byte of every `envelope` record.
const ENVELOPE_FORMAT: u8 = 1;
/// An id stored as the 16 bytes of a canonical UUID.
const ID_UUID: u8 = 0;
/// An id stored as text (length-prefixed UTF-8).
const ID_TEXT: u8 = 1;

/// The range of `at` a record may hold: what `DateTime<Utc>` can represent, in microseconds.
const MIN_MICROS: i64 = DateTime::<Utc>::MIN_UTC.timestamp_micros();
const MAX_MICROS: i64 = DateTime::<Utc>::MAX_UTC.timestamp_micros();

/// Writes the envelope fields that have no column of their own, in this order:
///
/// | bytes | field |
/// |---|---|
/// | 1 | format, [`ENVELOPE_FORMAT`] |
/// | 16 | `event_id` |
/// | 32 | `prev_hash` |
/// | 32 | `hash` |
/// | 8 | `at`, microseconds since the epoch, little-endian `i64` |
/// | 4 | `schema`, little-endian `u32` |
/// | 4 + n | `actor`: length (little-endian `u32`), UTF-8 |
/// | 17 or 5 + n | `correlation_id`: `0` + 16 UUID bytes if it is a canonical UUID, else `1` + length + UTF-8 |
/// | 17 or 5 + n | `causation_id`: the same |
pub(super) fn encode_envelope(e: &RecordedEvent, out: &mut Vec<u8>) {
    out.clear();
    out.push(ENVELOPE_FORMAT);
    out.extend_from_slice(e.event_id.as_bytes());
    out.extend_from_slice(&e.prev_hash.0);
    out.extend_from_slice(&e.hash.0);
    out.extend_from_slice(&e.at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&e.schema.to_le_bytes());
    push_text(out, &e.actor);
    push_id(out, &e.correlation_id);
    push_id(out, &e.causation_id);
}

fn push_text(out: &mut Vec<u8>, s: &str) {
    // Envelope strings are far below 4 GiB (DynamoDB items are at most 400 KB).
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn push_id(out: &mut Vec<u8>, s: &str) {
    if s.len() == 36
        && let Ok(u) = Uuid::try_parse(s)
    {
        let mut buf = [0u8; 36];
        // Only the canonical spelling is compacted, so decoding gives back the same string.
        if &*u.hyphenated().encode_lower(&mut buf) == s {
            out.push(ID_UUID);
            out.extend_from_slice(u.as_bytes());
            return;
        }
    }
    out.push(ID_TEXT);
    push_text(out, s);
}

/// A correlation or causation id as stored.
#[derive(Clone, Copy, Debug)]
enum IdRef<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl IdRef<'_> {
    fn to_owned_string(self) -> String {
        match self {
            IdRef::Uuid(bytes) => {
                // The canonical (lowercase, hyphenated) form, without going through `fmt`.
                let mut buf = [0u8; 36];
                Uuid::from_bytes(bytes)
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .to_owned()
            }
            IdRef::Text(s) => s.to_owned(),
        }
    }
}

/// An `envelope` record read in place: checked whole, nothing copied.
#[derive(Clone, Copy, Debug)]
pub(super) struct Envelope<'a> {
    event_id: [u8; 16],
    prev_hash: [u8; 32],
    hash: [u8; 32],
    /// `at` in microseconds, known to be in `DateTime`'s range (converted only when used).
    micros: i64,
    schema: u32,
    actor: &'a str,
    correlation_id: IdRef<'a>,
    causation_id: IdRef<'a>,
}

/// Reads an `envelope` record front to back; errors say what is wrong, for `Corrupt`.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.rest = rest;
                Ok(*head)
            }
            None => Err(format!("envelope ends inside {what}")),
        }
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let len = u32::from_le_bytes(self.take::<4>(what)?) as usize;
        if self.rest.len() < len {
            return Err(format!("envelope ends inside {what}"));
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(bytes).map_err(|e| format!("{what} is not UTF-8: {e}"))
    }

    fn id(&mut self, what: &str) -> Result<IdRef<'a>, String> {
        match self.take::<1>(what)?[0] {
            ID_UUID => Ok(IdRef::Uuid(self.take::<16>(what)?)),
            ID_TEXT => self.text(what).map(IdRef::Text),
            tag => Err(format!("{what} has unknown tag {tag}")),
        }
    }
}

impl<'a> Envelope<'a> {
    /// Reads a whole record; a record that is short, long or out of range is an error.
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { rest: bytes };
        let format = r.take::<1>("format")?[0];
        if format != ENVELOPE_FORMAT {
            return Err(format!("envelope format {format} is unknown"));
        }
        let event_id = r.take::<16>("event_id")?;
        let prev_hash = r.take::<32>("prev_hash")?;
        let hash = r.take::<32>("hash")?;
        let micros = i64::from_le_bytes(r.take::<8>("at")?);
        if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
            return Err(format!("time {micros} µs is out of range"));
        }
        let schema = u32::from_le_bytes(r.take::<4>("schema")?);
        let actor = r.text("actor")?;
        let correlation_id = r.id("correlation_id")?;
        let causation_id = r.id("causation_id")?;
        if !r.rest.is_empty() {
            return Err(format!("envelope has {} bytes too many", r.rest.len()));
        }
        Ok(Envelope {
            event_id,
            prev_hash,
            hash,
            micros,
            schema,
            actor,
            correlation_id,
            causation_id,
        })
    }

    /// When the event was recorded.
    fn at(&self) -> DateTime<Utc> {
        // `parse` checked the range, so this is never the fallback.
        DateTime::<Utc>::from_timestamp_micros(self.micros).unwrap_or_default()
    }

    /// The head fields of the event `version` whose envelope this is.
    pub(super) fn head(&self, version: u64) -> JobHead {
        JobHead {
            version,
            hash: Hash(self.hash),
            at: self.at(),
            event_id: Uuid::from_bytes(self.event_id),
            correlation_id: self.correlation_id.to_owned_string(),
        }
    }
}

/// `Corrupt`, naming the job and (when readable) the version.
pub(super) fn corrupt(job_id: JobId, version: Option<u64>, reason: String) -> StoreError {
    StoreError::Corrupt {
        job_id: job_id.to_string(),
        version,
        reason,
    }
}

/// One `events` row of a known job, borrowed from SQLite's buffers (columns `version, type,
/// data, envelope`). Reading it checks every column, so a damaged row is `Corrupt` whichever
/// way it is then used.
pub(super) struct EventRow<'a> {
    pub(super) version: u64,
    event_type: &'a str,
    data: &'a str,
    pub(super) envelope: Envelope<'a>,
    /// The raw `envelope` column, for keeping the last row's after the cursor moves on.
    pub(super) envelope_bytes: &'a [u8],
}

impl<'a> EventRow<'a> {
    /// Reads columns 0 to 3 of `row`.
    pub(super) fn read(row: &'a rusqlite::Row<'_>, job_id: JobId) -> Result<Self, StoreError> {
        let get = |i: usize| row.get_ref(i).map_err(super::backend);
        let version = match get(0)? {
            ValueRef::Integer(v) if v >= 1 => v as u64,
            _ => {
                return Err(corrupt(
                    job_id,
                    None,
                    "version is not a positive integer".into(),
                ));
            }
        };
        let bad = |reason: String| corrupt(job_id, Some(version), reason);
        let text = |value: ValueRef<'a>, name: &str| -> Result<&'a str, StoreError> {
            match value {
                ValueRef::Text(t) => {
                    std::str::from_utf8(t).map_err(|e| bad(format!("{name} is not UTF-8: {e}")))
                }
                other => Err(bad(format!("{name} is {:?}, not text", other.data_type()))),
            }
        };
        let event_type = text(get(1)?, "type")?;
        let data = text(get(2)?, "data")?;
        let envelope_bytes = match get(3)? {
            ValueRef::Blob(b) => b,
            other => {
                return Err(bad(format!(
                    "envelope is {:?}, not a blob",
                    other.data_type()
                )));
            }
        };
        let envelope = Envelope::parse(envelope_bytes).map_err(bad)?;
        Ok(EventRow {
            version,
            event_type,
            data,
            envelope,
            envelope_bytes,
        })
    }

    /// The event as the ledger stores it (the payload checked to be JSON).
    pub(super) fn to_recorded(&self, job_id: JobId) -> Result<RecordedEvent, StoreError> {
        let e = &self.envelope;
        let data = RawValue::from_string(self.data.to_owned()).map_err(|err| {
            corrupt(
                job_id,
                Some(self.version),
                format!("data is not JSON: {err}"),
            )
        })?;
        Ok(RecordedEvent {
            job_id,
            version: self.version,
            event_id: Uuid::from_bytes(e.event_id),
            event_type: self.event_type.to_owned(),
            schema: e.schema,
            data,
            at: e.at(),
            actor: e.actor.to_owned(),
            correlation_id: e.correlation_id.to_owned_string(),
            causation_id: e.causation_id.to_owned_string(),
            prev_hash: Hash(e.prev_hash),
            hash: Hash(e.hash),
        })
    }

    /// The payload decoded (and upcast) straight from SQLite's buffer. Decoding parses the
    /// whole payload, so a payload that is not JSON is `Corrupt` here just as in `to_recorded`.
    pub(super) fn decode(&self, job_id: JobId) -> Result<JobEvent, StoreError> {
        crate::upcast::decode(self.event_type, self.envelope.schema, self.data).map_err(|err| {
            corrupt(
                job_id,
                Some(self.version),
                format!("payload does not decode: {err}"),
            )
        })
    }
}
