//! A strict reader of event lines already in canonical form, which is what every export holds.
//!
//! `serde_json` parsing, re-serialising the event to compare it with the line, and re-encoding the
//! envelope to hash it cost several allocations and three passes per event. A canonical line
//! already contains every piece of the canonical envelope (the same JSON values, in another key
//! order), so this reader checks the line field by field against the one spelling the writer
//! produces, and hashes the pieces as they lie in the line.
//!
//! It accepts a line only when re-serialising the parsed event would give the same bytes: fixed
//! key order, no whitespace, strings with nothing to escape, canonical UUIDs, numbers, times and
//! lowercase hex. Anything else returns `None` and the caller takes the general path, which
//! reports exactly what is wrong. The tests compare both paths on every line and on mutated lines.

use chrono::{DateTime, NaiveDate, Utc};
use jobledger_events::{Hash, JobId, RecordedEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::format::Pin;

/// An event read from a canonical line, with its recomputed hash when asked for.
pub struct FastEvent {
    /// The event.
    pub event: RecordedEvent,
    /// `sha256(prev_hash ‖ canonical envelope)`, when hashing was asked for.
    pub computed: Option<Hash>,
}

/// Reads `line` if it is a canonical event line; `None` sends the caller to the general path.
pub fn parse_event(line: &[u8], hash: bool) -> Option<FastEvent> {
    // One UTF-8 check for the whole line; every slice below starts and ends at an ASCII byte.
    let text = std::str::from_utf8(line).ok()?;
    let mut c = Cursor { text, at: 0 };
    c.lit("{\"job_id\":\"")?;
    let job_id = c.uuid()?;
    c.lit("\",\"version\":")?;
    let (version, version_text) = c.number()?;
    c.lit(",\"event_id\":\"")?;
    let event_id_start = c.at;
    let event_id = c.uuid()?;
    let event_id_text = &text[event_id_start..event_id_start + 36];
    c.lit("\",\"type\":")?;
    let event_type = c.plain_string()?;
    c.lit(",\"schema\":")?;
    let (schema, schema_text) = c.number()?;
    c.lit(",\"data\":")?;
    let data = c.raw_value()?;
    c.lit(",\"at\":\"")?;
    let (at, at_text) = c.time()?;
    c.lit("\",\"actor\":")?;
    let actor = c.plain_string()?;
    c.lit(",\"correlation_id\":")?;
    let correlation = c.plain_string()?;
    c.lit(",\"causation_id\":")?;
    let causation = c.plain_string()?;
    c.lit(",\"prev_hash\":\"")?;
    let (prev_hash, prev_text) = c.hash()?;
    c.lit("\",\"hash\":\"")?;
    let (stored_hash, _) = c.hash()?;
    c.lit("\"}")?;
    if c.at != text.len() {
        return None;
    }
    let schema = u32::try_from(schema).ok()?;
    let job_text = &text[11..47];
    let computed = hash.then(|| {
        // The canonical envelope (keys sorted), assembled from the line's own pieces.
        let mut h = Sha256::new();
        h.update(prev_hash.0);
        for piece in [
            "{\"actor\":",
            actor,
            ",\"at\":\"",
            at_text,
            "\",\"causation_id\":",
            causation,
            ",\"correlation_id\":",
            correlation,
            ",\"data\":",
            data.get(),
            ",\"event_id\":\"",
            event_id_text,
            "\",\"job_id\":\"",
            job_text,
            "\",\"prev_hash\":\"",
            prev_text,
            "\",\"schema\":",
            schema_text,
            ",\"type\":",
            event_type,
            ",\"version\":",
            version_text,
            "}",
        ] {
            h.update(piece.as_bytes());
        }
        Hash(h.finalize().into())
    });
    let unquote = |s: &str| s[1..s.len() - 1].to_owned();
    let event = RecordedEvent {
        job_id: JobId(job_id),
        version,
        event_id,
        event_type: unquote(event_type),
        schema,
        data,
        at,
        actor: unquote(actor),
        correlation_id: unquote(correlation),
        causation_id: unquote(causation),
        prev_hash,
        hash: stored_hash,
    };
    Some(FastEvent { event, computed })
}

/// The value of each lowercase hex digit; 0xff for every other byte (uppercase is not canonical).
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Reads `line` if it is a pin line in canonical form; `None` sends the caller to the general path.
pub fn parse_pin(line: &[u8]) -> Option<Pin> {
    let text = std::str::from_utf8(line).ok()?;
    let mut c = Cursor { text, at: 0 };
    c.lit("{\"pin\":{\"job_id\":\"")?;
    let job_id = JobId(c.uuid()?);
    c.lit("\",\"version\":")?;
    let (version, _) = c.number()?;
    c.lit(",\"hash\":\"")?;
    let (hash, _) = c.hash()?;
    c.lit("\"}}")?;
    (c.at == text.len()).then_some(Pin {
        job_id,
        version,
        hash,
    })
}

/// A position in a line, advanced by each successful read.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    fn lit(&mut self, s: &str) -> Option<()> {
        self.rest()
            .starts_with(s.as_bytes())
            .then(|| self.at += s.len())
    }

    /// A lowercase hyphenated UUID (36 characters, no quotes).
    fn uuid(&mut self) -> Option<Uuid> {
        let bytes = self.rest().get(..36)?;
        let ok = bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => NIBBLE[usize::from(b)] < 16,
        });
        if !ok {
            return None;
        }
        let id = Uuid::try_parse_ascii(bytes).ok()?;
        self.at += 36;
        Some(id)
    }

    /// A non-negative integer as serde writes it (no sign, no leading zero), with its text.
    fn number(&mut self) -> Option<(u64, &'a str)> {
        let len = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let digits = &self.text[self.at..self.at + len];
        if len == 0 || (len > 1 && digits.starts_with('0')) {
            return None;
        }
        let n = digits.parse().ok()?;
        self.at += len;
        Some((n, digits))
    }

    /// A quoted string with nothing to escape (no backslash, no control character), quotes included.
    fn plain_string(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        if rest.first() != Some(&b'"') {
            return None;
        }
        let len = rest[1..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[1 + len] != b'"' {
            return None;
        }
        let s = &self.text[self.at..self.at + len + 2];
        self.at += len + 2;
        Some(s)
    }

    /// A JSON value kept as it is (validated by serde_json, which also finds where it ends).
    fn raw_value(&mut self) -> Option<Box<RawValue>> {
        // A raw value starts at its first byte; leading whitespace would not survive re-serialising.
        if self.rest().first().is_none_or(u8::is_ascii_whitespace) {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(&self.text[self.at..]);
        let raw = Box::<RawValue>::deserialize(&mut de).ok()?;
        self.at += raw.get().len();
        Some(raw)
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the one spelling `format_time` writes (no leap second).
    fn time(&mut self) -> Option<(DateTime<Utc>, &'a str)> {
        let b = self.rest().get(..27)?;
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            b[r.clone()].iter().try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
        };
        let seps = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ];
        if seps.iter().any(|&(i, c)| b[i] != c) {
            return None;
        }
        let (second, micro) = (num(17..19)?, num(20..26)?);
        if second > 59 {
            return None;
        }
        let at = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?
            .and_hms_micro_opt(num(11..13)?, num(14..16)?, second, micro)?
            .and_utc();
        let s = &self.text[self.at..self.at + 27];
        self.at += 27;
        Some((at, s))
    }

    /// 64 lowercase hex characters.
    fn hash(&mut self) -> Option<(Hash, &'a str)> {
        let b = self.rest().get(..64)?;
        let mut out = [0u8; 32];
        // One table lookup per digit; a generic decoder costs several times more per event.
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            bad |= (hi | lo) & 0xf0;
            *o = (hi << 4) | lo;
        }
        if bad != 0 {
            return None;
        }
        let s = &self.text[self.at..self.at + 64];
        self.at += 64;
        Some((Hash(out), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Rng, Synth};

    /// What the general path makes of a line: the event, its hash and whether it is canonical.
    fn general(line: &[u8]) -> Option<(RecordedEvent, Hash, bool)> {
        let e: RecordedEvent = serde_json::from_slice(line).ok()?;
        let canonical = serde_json::to_vec(&e).ok().as_deref() == Some(line);
        let hash = jobledger_events::chain::compute_hash(&e);
        Some((e, hash, canonical))
    }

    fn lines(jobs: usize) -> Vec<Vec<u8>> {
        let mut synth = Synth::new(11);
        (0..jobs)
            .flat_map(|_| synth.job())
            .map(|e| serde_json::to_vec(&e).expect("an event serialises"))
            .collect()
    }

    #[test]
    fn every_generated_line_is_read_exactly_as_the_general_path_reads_it() {
        for line in lines(200) {
            let fast = parse_event(&line, true).expect("a canonical line takes the fast path");
            let (event, hash, canonical) = general(&line).expect("the line parses");
            assert!(canonical);
            assert_eq!(fast.event, event);
            assert_eq!(fast.computed, Some(hash));
            assert_eq!(parse_event(&line, false).map(|f| f.computed), Some(None));
        }
    }

    /// Bytes a mutation favours: those the strict reader looks at.
    const ALPHABET: &[u8] = b"0123456789abcdefABCDEF\"\\ {}:,-.TZ";

    #[test]
    fn a_mutated_line_is_either_refused_or_read_as_the_general_path_reads_it() {
        let lines = lines(100);
        let mut rng = Rng::new(3);
        let mut refused = 0;
        for _ in 0..20_000 {
            let mut line = lines[rng.below(lines.len() as u64) as usize].clone();
            let i = rng.below(line.len() as u64) as usize;
            line[i] = match rng.below(4) {
                0 => line[i] ^ (1 << rng.below(8)),
                1 => ALPHABET[rng.below(ALPHABET.len() as u64) as usize],
                _ => rng.below(256) as u8,
            };
            match parse_event(&line, true) {
                // Accepted: the general path must agree on every field, the hash and canonicity.
                Some(fast) => {
                    let (event, hash, canonical) =
                        general(&line).expect("an accepted line parses generally too");
                    assert!(canonical, "accepted a non-canonical line");
                    assert_eq!(fast.event, event);
                    assert_eq!(fast.computed, Some(hash));
                }
                None => refused += 1,
            }
        }
        assert!(refused > 0, "no mutation was refused");
    }

    #[test]
    fn a_pin_line_is_read_only_in_its_canonical_form() {
        let events = Synth::new(5).job();
        let pin = Pin::of(&events).expect("a history has a pin");
        let line = format!(
            "{{\"pin\":{}}}",
            serde_json::to_string(&pin).expect("serialises")
        );
        assert_eq!(parse_pin(line.as_bytes()), Some(pin));
        for bad in [
            line.replacen("\"version\"", " \"version\"", 1),
            line.replacen("\"hash\":\"", "\"hash\":\"0", 1),
            line.to_uppercase(),
            line.clone() + "}",
        ] {
            assert_eq!(parse_pin(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn non_canonical_spellings_are_left_to_the_general_path() {
        let line = String::from_utf8(lines(1).remove(0)).expect("UTF-8");
        let cases = [
            line.replacen("{\"job_id\"", "{ \"job_id\"", 1),
            line.replacen("\"version\":1", "\"version\":01", 1),
            line.replacen("\"actor\":\"", "\"actor\":\"\\u0061", 1),
            line.replacen("Z\",\"actor\"", "+00:00\",\"actor\"", 1),
            line.replacen("\"hash\":\"", "\"hash\":\"A", 1),
            line.clone() + " ",
        ];
        for case in cases {
            assert_ne!(case, line);
            assert!(parse_event(case.as_bytes(), true).is_none(), "{case}");
        }
    }
}
