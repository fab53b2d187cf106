//! The hash chain: canonical bytes of an envelope and the SHA-256 link between events.
//!
//! The format is written down byte for byte in `docs/ledger-format.md`.

use sha2::{Digest, Sha256};

use crate::envelope::{Hash, RecordedEvent, format_time};

/// Canonical (RFC 8785) JSON bytes of the envelope without `hash`.
///
/// The envelope's keys are fixed, so they are written in their sorted order directly;
/// `data` is already canonical JSON and is embedded as is.
pub fn canonical_bytes(e: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + e.data.get().len());
    out.extend_from_slice(b"{\"actor\":");
    push_str(&mut out, &e.actor);
    out.extend_from_slice(b",\"at\":");
    push_str(&mut out, &format_time(&e.at));
    out.extend_from_slice(b",\"causation_id\":");
    push_str(&mut out, &e.causation_id);
    out.extend_from_slice(b",\"correlation_id\":");
    push_str(&mut out, &e.correlation_id);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(e.data.get().as_bytes());
    out.extend_from_slice(b",\"event_id\":\"");
    out.extend_from_slice(e.event_id.hyphenated().to_string().as_bytes());
    out.extend_from_slice(b"\",\"job_id\":\"");
    out.extend_from_slice(e.job_id.to_string().as_bytes());
    out.extend_from_slice(b"\",\"prev_hash\":\"");
    out.extend_from_slice(e.prev_hash.to_hex().as_bytes());
    out.extend_from_slice(b"\",\"schema\":");
    out.extend_from_slice(e.schema.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":");
    push_str(&mut out, &e.event_type);
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(e.version.to_string().as_bytes());
    out.push(b'}');
    out
}

/// JSON string escaping as RFC 8785 requires (serde_json escapes exactly the same set).
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `sha256(prev_hash ‖ canonical_bytes(event))`.
pub fn compute_hash(e: &RecordedEvent) -> Hash {
    let mut h = Sha256::new();
    h.update(e.prev_hash.0);
    h.update(canonical_bytes(e));
    Hash(h.finalize().into())
}

/// Canonical (RFC 8785) JSON text of a payload value.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // Only non-finite floats fail, and serde_json::Value cannot hold them.
    serde_json_canonicalizer::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// A break in a job's chain, found by [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The version where the chain breaks.
    pub version: u64,
    /// Which rule failed.
    pub rule: &'static str,
    /// Details for a person.
    pub detail: String,
}

/// Checks versions (1, 2, 3 …), links (`prev_hash` = previous `hash`) and each hash.
pub fn verify_chain(events: &[RecordedEvent]) -> Vec<ChainBreak> {
    let mut breaks = Vec::new();
    let mut prev = Hash::ZERO;
    for (i, e) in events.iter().enumerate() {
        let expected_version = i as u64 + 1;
        if e.version != expected_version {
            breaks.push(ChainBreak {
                version: e.version,
                rule: "gap-free versions",
                detail: format!("expected version {expected_version}, found {}", e.version),
            });
        }
        if e.prev_hash != prev {
            breaks.push(ChainBreak {
                version: e.version,
                rule: "chain link",
                detail: format!(
                    "prev_hash {} does not match previous hash {}",
                    e.prev_hash, prev
                ),
            });
        }
        let computed = compute_hash(e);
        if computed != e.hash {
            breaks.push(ChainBreak {
                version: e.version,
                rule: "event hash",
                detail: format!("stored hash {} but content hashes to {}", e.hash, computed),
            });
        }
        prev = e.hash;
    }
    breaks
}
