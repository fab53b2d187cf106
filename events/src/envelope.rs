//! The stored form of an event: envelope fields plus the canonical JSON payload.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{DecodeError, JobEvent};
use crate::ids::JobId;

/// A SHA-256 digest; written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of version 1: 32 zero bytes.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Hash, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Formats a time the one way the ledger stores it: RFC 3339, UTC, microseconds, `Z`.
pub fn format_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a ledger time, accepting only the canonical form `format_time` writes.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let at = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("bad time {s:?}: {e}"))?
        .with_timezone(&Utc);
    if format_time(&at) != s {
        return Err(format!("time {s:?} is not in canonical form"));
    }
    Ok(at)
}

/// Truncates a time to the microsecond precision the ledger keeps.
pub fn ledger_time(at: DateTime<Utc>) -> DateTime<Utc> {
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(at)
}

mod ledger_time_serde {
    use super::*;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_time(&s).map_err(serde::de::Error::custom)
    }
}

/// One event exactly as the ledger stores it (field names are the wire contract).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The job (stream id).
    pub job_id: JobId,
    /// 1, 2, 3 … per job; gap-free.
    pub version: u64,
    /// Unique; downstream dedup id.
    pub event_id: Uuid,
    /// e.g. `JobSubmitted`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload schema version.
    pub schema: u32,
    /// The payload, as canonical (RFC 8785) JSON.
    pub data: Box<RawValue>,
    /// When it was recorded.
    #[serde(with = "ledger_time_serde")]
    pub at: DateTime<Utc>,
    /// Who caused it: `api-key:<id>`, `worker:<task>`, `system:sweeper`, …
    pub actor: String,
    /// The request that started the chain.
    pub correlation_id: String,
    /// The event or command that caused this one.
    pub causation_id: String,
    /// Hash of the previous event of the job (zero for version 1).
    pub prev_hash: Hash,
    /// `sha256(prev_hash ‖ canonical bytes of this envelope without hash)`.
    pub hash: Hash,
}

impl PartialEq for RecordedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.job_id == other.job_id
            && self.version == other.version
            && self.event_id == other.event_id
            && self.event_type == other.event_type
            && self.schema == other.schema
            && self.data.get() == other.data.get()
            && self.at == other.at
            && self.actor == other.actor
            && self.correlation_id == other.correlation_id
            && self.causation_id == other.causation_id
            && self.prev_hash == other.prev_hash
            && self.hash == other.hash
    }
}

impl RecordedEvent {
    /// The payload decoded into the current schema (upcasting older ones).
    pub fn decode(&self) -> Result<JobEvent, DecodeError> {
        crate::upcast::decode(&self.event_type, self.schema, self.data.get())
    }

    /// Whether the stored hash matches the recomputed one (the chain link is checked separately).
    pub fn hash_is_valid(&self) -> bool {
        crate::chain::compute_hash(self) == self.hash
    }
}
