//! A strict reader of event lines already in canonical form, which is what every export holds.
//!
//! `serde_json` parsing, re-serialising the event to compare it with the line, and re-encoding the
//! envelope to hash it cost several allocations and three passes per event. A canonical line
//! already contains every piece of the canonical envelope (the same JSON values, in another key
//! order), so this reader checks the line field by field against the one spelling the writer
//! produces, and hashes the pieces as they lie in the line.
//!
//! It accepts a line only when re-serialising the parsed event would give the same bytes: fixed
//! key order, no whitespace, ASCII strings with nothing to escape, canonical UUIDs, numbers, times
//! and lowercase hex. Anything else returns `None` and the caller takes the general path, which
//! reports exactly what is wrong. The tests compare both paths on every line and on mutated lines.
//!
//! Scans that fold (and `verify`) read lines with [`parse_item`]: one pass, nothing copied, the
//! payload decoded where it lies in the line (which also finds where it ends), the chain fields
//! read only when checked. Export and import keep [`parse_event`], which owns the event.

use chrono::{DateTime, NaiveDate, Utc};
use jobledger_events::{EventHead, Hash, JobEvent, JobId, RecordedEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use jobledger_events::envelope::plain_str_len;

use crate::format::{Chain, EventItem, Pin, Pos};

/// An event read from a canonical line, with its recomputed hash when asked for.
pub struct FastEvent {
    /// The event.
    pub event: RecordedEvent,
    /// `sha256(prev_hash ‖ canonical envelope)`, when hashing was asked for.
    pub computed: Option<Hash>,
}

/// The fields of a canonical event line, as they lie in it (strings with their quotes).
struct Pieces<'a> {
    job_id: Uuid,
    job_text: &'a [u8],
    version: u64,
    version_text: &'a [u8],
    event_id: Uuid,
    event_id_text: &'a [u8],
    event_type: &'a [u8],
    schema: u32,
    schema_text: &'a [u8],
    data: &'a [u8],
    at: DateTime<Utc>,
    at_text: &'a [u8],
    actor: &'a [u8],
    correlation: &'a [u8],
    causation: &'a [u8],
    prev_text: &'a [u8],
    hash_text: &'a [u8],
}

impl<'a> Pieces<'a> {
    /// `sha256(prev_hash ‖ canonical envelope)`: the envelope's keys sorted, from the line's pieces.
    fn hash(&self, prev_hash: &Hash) -> Hash {
        let pieces = [
            &b"{\"actor\":"[..],
            self.actor,
            b",\"at\":\"",
            self.at_text,
            b"\",\"causation_id\":",
            self.causation,
            b",\"correlation_id\":",
            self.correlation,
            b",\"data\":",
            self.data,
            b",\"event_id\":\"",
            self.event_id_text,
            b"\",\"job_id\":\"",
            self.job_text,
            b"\",\"prev_hash\":\"",
            self.prev_text,
            b"\",\"schema\":",
            self.schema_text,
            b",\"type\":",
            self.event_type,
            b",\"version\":",
            self.version_text,
            b"}",
        ];
        // One update of the whole envelope: SHA-256 takes one long input much faster than 23
        // short ones. A line too long for the buffer goes piece by piece.
        let mut buf = [0u8; 2048];
        let mut len = 32;
        buf[..32].copy_from_slice(&prev_hash.0);
        let mut h = Sha256::new();
        for piece in pieces {
            match buf.get_mut(len..len + piece.len()) {
                Some(room) => {
                    room.copy_from_slice(piece);
                    len += piece.len();
                }
                None => {
                    h.update(&buf[..len]);
                    h.update(piece);
                    len = 0;
                }
            }
        }
        h.update(&buf[..len]);
        Hash(h.finalize().into())
    }

    /// The unquoted type name.
    fn type_name(&self) -> Option<&'a str> {
        std::str::from_utf8(&self.event_type[1..self.event_type.len() - 1]).ok()
    }
}

/// Splits a canonical event line into its pieces; `read_data` reads the payload from the start
/// of the bytes it is given (knowing the type and the schema) and says how long it is.
///
/// The envelope's own strings must be ASCII (anything else takes the general path), so the line
/// needs no UTF-8 pass of its own: the payload's reader checks the payload's strings.
fn split<'a, D>(
    line: &'a [u8],
    read_data: impl FnOnce(&'a [u8], &'a str, u32) -> Option<(D, usize)>,
) -> Option<(Pieces<'a>, D)> {
    let mut c = Cursor { line, at: 0 };
    c.lit(b"{\"job_id\":\"")?;
    let (job_id, job_text) = c.uuid()?;
    c.lit(b"\",\"version\":")?;
    let (version, version_text) = c.number()?;
    c.lit(b",\"event_id\":\"")?;
    let (event_id, event_id_text) = c.uuid()?;
    c.lit(b"\",\"type\":")?;
    let event_type = c.plain_string()?;
    let type_name = std::str::from_utf8(&event_type[1..event_type.len() - 1]).ok()?;
    c.lit(b",\"schema\":")?;
    let (schema, schema_text) = c.number()?;
    let schema = u32::try_from(schema).ok()?;
    c.lit(b",\"data\":")?;
    // A value starts at its first byte; leading whitespace would not survive re-serialising.
    let rest = c.rest();
    if rest.first().is_none_or(u8::is_ascii_whitespace) {
        return None;
    }
    let (payload, len) = read_data(rest, type_name, schema)?;
    let data = rest.get(..len)?;
    c.at += len;
    c.lit(b",\"at\":\"")?;
    let (at, at_text) = c.time()?;
    c.lit(b"\",\"actor\":")?;
    let actor = c.plain_string()?;
    c.lit(b",\"correlation_id\":")?;
    let correlation = c.plain_string()?;
    c.lit(b",\"causation_id\":")?;
    let causation = c.plain_string()?;
    c.lit(b",\"prev_hash\":\"")?;
    let prev_text = c.hex64()?;
    c.lit(b"\",\"hash\":\"")?;
    let hash_text = c.hex64()?;
    c.lit(b"\"}")?;
    if c.at != line.len() {
        return None;
    }
    let pieces = Pieces {
        job_id,
        job_text,
        version,
        version_text,
        event_id,
        event_id_text,
        event_type,
        schema,
        schema_text,
        data,
        at,
        at_text,
        actor,
        correlation,
        causation,
        prev_text,
        hash_text,
    };
    Some((pieces, payload))
}

/// Reads `line` if it is a canonical event line; `None` sends the caller to the general path.
pub fn parse_event(line: &[u8], hash: bool) -> Option<FastEvent> {
    let (p, data) = split(line, |rest, _, _| {
        // The payload kept as it is: validated by serde_json, which also finds where it ends.
        let mut de = serde_json::Deserializer::from_slice(rest);
        let raw = Box::<RawValue>::deserialize(&mut de).ok()?;
        let len = raw.get().len();
        Some((raw, len))
    })?;
    let prev_hash = hex_hash(p.prev_text);
    let computed = hash.then(|| p.hash(&prev_hash));
    let unquote = |s: &[u8]| String::from_utf8(s[1..s.len() - 1].to_vec()).ok();
    let event = RecordedEvent {
        job_id: JobId(p.job_id),
        version: p.version,
        event_id: p.event_id,
        event_type: unquote(p.event_type)?,
        schema: p.schema,
        data,
        at: p.at,
        actor: unquote(p.actor)?,
        correlation_id: unquote(p.correlation)?,
        causation_id: unquote(p.causation)?,
        prev_hash,
        hash: hex_hash(p.hash_text),
    };
    Some(FastEvent { event, computed })
}

/// Reads `line` as an item if it is a canonical event line whose payload decodes; `None` sends
/// the caller to the general path (which also phrases decoding errors against the payload alone).
///
/// One pass: the payload is decoded where it lies in the line (`upcast::decode_prefix`), which
/// also finds its end, and nothing of the envelope is copied. The chain fields are read only
/// with `check`; without it their hex is still checked, so both paths accept the same lines.
pub fn parse_item(line: &[u8], pos: Pos, check: bool) -> Option<EventItem<'_>> {
    let (p, event): (Pieces<'_>, JobEvent) = split(line, |rest, event_type, schema| {
        jobledger_events::upcast::decode_prefix(event_type, schema, rest).ok()
    })?;
    let chain = check.then(|| {
        let prev_hash = hex_hash(p.prev_text);
        Chain {
            prev_hash,
            hash: hex_hash(p.hash_text),
            computed: Some(p.hash(&prev_hash)),
            canonical: true,
        }
    });
    let head = EventHead {
        job_id: JobId(p.job_id),
        version: p.version,
        event_type: p.type_name()?,
        at: p.at,
    };
    Some(EventItem::decoded(head, pos, chain, event))
}

/// Reads `line` if it is a pin line in canonical form; `None` sends the caller to the general path.
pub fn parse_pin(line: &[u8]) -> Option<Pin> {
    let mut c = Cursor { line, at: 0 };
    c.lit(b"{\"pin\":{\"job_id\":\"")?;
    let job_id = JobId(c.uuid()?.0);
    c.lit(b"\",\"version\":")?;
    let (version, _) = c.number()?;
    c.lit(b",\"hash\":\"")?;
    let hash = hex_hash(c.hex64()?);
    c.lit(b"\"}}")?;
    (c.at == line.len()).then_some(Pin {
        job_id,
        version,
        hash,
    })
}

/// A position in a line, advanced by each successful read.
struct Cursor<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.line[self.at..]
    }

    /// Takes `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.line[self.at..self.at + n];
        self.at += n;
        s
    }

    /// A fixed piece of the line (compared as one array: no call to `memcmp`).
    fn lit<const N: usize>(&mut self, s: &[u8; N]) -> Option<()> {
        (self.rest().first_chunk::<N>() == Some(s)).then(|| self.at += N)
    }

    /// A lowercase hyphenated UUID (36 characters, no quotes), with its text.
    fn uuid(&mut self) -> Option<(Uuid, &'a [u8])> {
        let b = self.rest().first_chunk::<36>()?;
        // The 32 digits side by side, so they are checked and decoded eight at a time.
        let mut hex = [0u8; 32];
        hex[0..8].copy_from_slice(&b[0..8]);
        hex[8..12].copy_from_slice(&b[9..13]);
        hex[12..16].copy_from_slice(&b[14..18]);
        hex[16..20].copy_from_slice(&b[19..23]);
        hex[20..32].copy_from_slice(&b[24..36]);
        if [b[8], b[13], b[18], b[23]] != [b'-'; 4] {
            return None;
        }
        let mut bytes = [0u8; 16];
        decode_hex(&hex, &mut bytes)?;
        Some((Uuid::from_bytes(bytes), self.take(36)))
    }

    /// A non-negative integer as serde writes it (no sign, no leading zero), with its text.
    fn number(&mut self) -> Option<(u64, &'a [u8])> {
        let len = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let digits = &self.rest()[..len];
        if len == 0 || (len > 1 && digits[0] == b'0') {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        Some((n, self.take(len)))
    }

    /// A quoted ASCII string with nothing to escape (no backslash, no control character),
    /// quotes included.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest();
        if rest.first() != Some(&b'"') {
            return None;
        }
        let len = plain_str_len(&rest[1..], true)?;
        Some(self.take(len + 2))
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the one spelling `format_time` writes (no leap second).
    fn time(&mut self) -> Option<(DateTime<Utc>, &'a [u8])> {
        let b = self.rest().first_chunk::<27>()?;
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            b[r.clone()].iter().try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
        };
        let seps = [b[4], b[7], b[10], b[13], b[16], b[19], b[26]];
        if seps != *b"--T::.Z" {
            return None;
        }
        let (second, micro) = (num(17..19)?, num(20..26)?);
        if second > 59 {
            return None;
        }
        let at = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?
            .and_hms_micro_opt(num(11..13)?, num(14..16)?, second, micro)?
            .and_utc();
        Some((at, self.take(27)))
    }

    /// 64 lowercase hex characters (a hash), as text.
    fn hex64(&mut self) -> Option<&'a [u8]> {
        let b = self.rest().first_chunk::<64>()?;
        if !b
            .chunks_exact(8)
            .fold(true, |ok, w| ok & (hex_word(w).0 == HIGH))
        {
            return None;
        }
        Some(self.take(64))
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Eight hex digits at once: the high bit of each byte of the first word is set where the byte
/// is a lowercase hex digit (uppercase is not canonical); the second holds the digits' values.
fn hex_word(digits: &[u8]) -> (u64, u64) {
    let mut w = [0u8; 8];
    w.copy_from_slice(&digits[..8]);
    let w = u64::from_le_bytes(w);
    // For a byte below 0x80, `b + (0x80 - lo)` has its high bit set exactly when `b >= lo`.
    let at_least = |lo: u64| w.wrapping_add(ONES * (0x80 - lo));
    let in_range = |lo: u64, hi: u64| at_least(lo) & !at_least(hi + 1);
    let ok = (in_range(0x30, 0x39) | in_range(0x61, 0x66)) & !w & HIGH;
    // '0'..='9' is 0x30..=0x39 and 'a'..='f' is 0x61..=0x66: the low four bits, plus 9 for letters.
    let values = (w & (ONES * 0x0f)) + ((w >> 6) & ONES) * 9;
    (ok, values)
}

/// Decodes 2 × `out.len()` lowercase hex digits (a multiple of eight) into `out`; `None` on
/// anything but lowercase hex.
fn decode_hex(digits: &[u8], out: &mut [u8]) -> Option<()> {
    for (word, out) in digits.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
        let (ok, v) = hex_word(word);
        if ok != HIGH {
            return None;
        }
        // Byte 2k of `pairs` is digit 2k times 16 plus digit 2k + 1; keep the even bytes.
        let pairs = ((v << 4) | (v >> 8)) & 0x00ff_00ff_00ff_00ff;
        let pairs = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
        let pairs = (pairs | (pairs >> 16)) as u32;
        out.copy_from_slice(&pairs.to_le_bytes());
    }
    Some(())
}

/// The hash spelled by 64 lowercase hex digits already checked by `hex64`.
fn hex_hash(text: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    // Checked before: decoding cannot fail here.
    let _ = decode_hex(text, &mut out);
    Hash(out)
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
            assert_item_reads_as(&line, &event, hash);
        }
    }

    #[test]
    fn a_line_longer_than_the_hash_buffer_hashes_as_the_general_path_does() {
        let mut event: RecordedEvent = serde_json::from_slice(&lines(1).remove(0)).expect("parses");
        for len in [1900, 2000, 2100, 5000] {
            event.actor = "a".repeat(len);
            let line = serde_json::to_vec(&event).expect("serialises");
            let (general, hash, _) = general(&line).expect("parses");
            let fast = parse_event(&line, true).expect("canonical");
            assert_eq!(fast.computed, Some(hash), "actor of {len}");
            assert_item_reads_as(&line, &general, hash);
        }
    }

    /// `parse_item` of `line` gives what the general path gives for `event`, with and without check.
    fn assert_item_reads_as(line: &[u8], event: &RecordedEvent, hash: Hash) {
        let pos = Pos::Line(7);
        let item = parse_item(line, pos, true).expect("a decodable canonical line is an item");
        assert_eq!(item.head, event.head());
        assert_eq!(item.pos, pos);
        let chain = Chain {
            prev_hash: event.prev_hash,
            hash: event.hash,
            computed: Some(hash),
            canonical: true,
        };
        assert_eq!(item.chain, Some(chain));
        assert_eq!(
            item.decode().expect("decoded"),
            event.decode().expect("decodes")
        );
        let unchecked = parse_item(line, pos, false).expect("read without check too");
        assert_eq!(unchecked.chain, None);
        assert_eq!(unchecked.head, event.head());
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
            let item = parse_item(&line, Pos::None, false).is_some();
            match parse_event(&line, true) {
                // Accepted: the general path must agree on every field, the hash and canonicity.
                Some(fast) => {
                    let (event, hash, canonical) =
                        general(&line).expect("an accepted line parses generally too");
                    assert!(canonical, "accepted a non-canonical line");
                    assert_eq!(fast.event, event);
                    assert_eq!(fast.computed, Some(hash));
                    // An item exactly when the payload decodes; then it reads the same.
                    assert_eq!(item, event.decode().is_ok());
                    if item {
                        assert_item_reads_as(&line, &event, hash);
                    }
                }
                None => {
                    assert!(!item, "an item from a line the event reader refuses");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "no mutation was refused");
    }

    #[test]
    fn hex_is_decoded_eight_digits_at_a_time_and_only_lowercase_is_taken() {
        let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        for at in 0..16 {
            for byte in 0..=255u8 {
                // Every byte value at every place (a carry out of a byte above 0x7f must not
                // make its neighbour pass).
                let mut digits = *b"0123456789abcdef";
                digits[at] = byte;
                let mut out = [0u8; 8];
                let got = decode_hex(&digits, &mut out).map(|()| out);
                let want = digits
                    .iter()
                    .all(|&b| lower(b))
                    .then(|| hex::decode(digits).expect("hex"))
                    .map(|v| <[u8; 8]>::try_from(v).expect("eight bytes"));
                assert_eq!(got, want, "{digits:?}");
            }
        }
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
