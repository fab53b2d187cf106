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

/// The length of the JSON string body at the start of `bytes` (just after its opening quote)
/// when it ends with a `"` and holds nothing to unescape: no backslash, no control character
/// and, with `ascii`, nothing but ASCII. `None` otherwise. Readers of canonical JSON use it to
/// take a string without serde; it looks at eight bytes at a time.
pub fn plain_str_len(bytes: &[u8], ascii: bool) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let stops = |b: u8| b == b'"' || b == b'\\' || b < 0x20 || (ascii && b >= 0x80);
    let mut at = 0;
    while let Some(chunk) = bytes[at..].first_chunk::<8>() {
        let w = u64::from_le_bytes(*chunk);
        let (quote, backslash) = (w ^ (ONES * u64::from(b'"')), w ^ (ONES * u64::from(b'\\')));
        // A byte's high bit is set in `found` where it is `"`, `\` or below 0x20 (the borrow of a
        // subtraction only ever marks bytes above the first such byte, so the lowest mark is exact).
        let mut found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        if ascii {
            found |= w;
        }
        found &= HIGH;
        if found != 0 {
            let end = at + (found.trailing_zeros() / 8) as usize;
            return (bytes[end] == b'"').then_some(end);
        }
        at += 8;
    }
    let end = at + bytes[at..].iter().position(|&b| stops(b))?;
    (bytes[end] == b'"').then_some(end)
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

/// The envelope fields a fold reads, borrowed from wherever the event was read (a stored event,
/// or a line of an export that a replay reads without copying).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHead<'a> {
    /// The job.
    pub job_id: JobId,
    /// The event's version.
    pub version: u64,
    /// The type name, e.g. `JobSubmitted`.
    pub event_type: &'a str,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The fields a fold reads besides the payload.
    pub fn head(&self) -> EventHead<'_> {
        EventHead {
            job_id: self.job_id,
            version: self.version,
            event_type: &self.event_type,
            at: self.at,
        }
    }

    /// The payload decoded into the current schema (upcasting older ones).
    pub fn decode(&self) -> Result<JobEvent, DecodeError> {
        crate::upcast::decode(&self.event_type, self.schema, self.data.get())
    }

    /// Whether the stored hash matches the recomputed one (the chain link is checked separately).
    pub fn hash_is_valid(&self) -> bool {
        crate::chain::compute_hash(self) == self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition `plain_str_len` must match.
    fn slow(bytes: &[u8], ascii: bool) -> Option<usize> {
        let end = bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20 || (ascii && b >= 0x80))?;
        (bytes[end] == b'"').then_some(end)
    }

    #[test]
    fn a_plain_string_ends_at_its_first_quote_and_nothing_is_let_through() {
        let alphabet = [
            b'a', b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, 0x00, b'Z', b'~',
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = (seed >> (i % 50)) as usize ^ i.wrapping_mul(31);
                    // Mostly plain letters, so the stops fall anywhere in a long run.
                    if r.is_multiple_of(7) {
                        alphabet[r % alphabet.len()]
                    } else {
                        b'a' + (r % 26) as u8
                    }
                })
                .collect();
            for ascii in [false, true] {
                assert_eq!(
                    plain_str_len(&bytes, ascii),
                    slow(&bytes, ascii),
                    "{bytes:?}"
                );
            }
        }
        assert_eq!(plain_str_len(b"0123456789abcdef\"", true), Some(16));
        assert_eq!(plain_str_len("caf\u{e9}\"".as_bytes(), true), None);
        assert_eq!(plain_str_len("caf\u{e9}\"".as_bytes(), false), Some(5));
        assert_eq!(plain_str_len(b"no end", false), None);
    }
}
