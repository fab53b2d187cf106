//! The export file format: one `RecordedEvent` JSON per line (`serde_json::to_string`), and after
//! each job's events a pin line `{"pin":{"job_id":…,"version":…,"hash":…}}` carrying the job's head.
//! A name ending in `.zst` is zstd-compressed. `scripts/verify_ledger.py` reads exactly this format.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jobledger_events::event::DecodeError;
use jobledger_events::{EventHead, Hash, JobEvent, JobId, RecordedEvent};
use serde::{Deserialize, Serialize};

/// The head of one job's chain, written after its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The job.
    pub job_id: JobId,
    /// Its last version.
    pub version: u64,
    /// The hash of its last event.
    pub hash: Hash,
}

/// The pin line's wrapper object.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinLine {
    pin: Pin,
}

impl Pin {
    /// The pin of a non-empty history (its last event).
    pub fn of(events: &[RecordedEvent]) -> Option<Pin> {
        events.last().map(|e| Pin {
            job_id: e.job_id,
            version: e.version,
            hash: e.hash,
        })
    }
}

/// Where an entry was read from, so findings can point at it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pos {
    /// Unknown (e.g. one job loaded by id).
    #[default]
    None,
    /// 1-based line of an export file.
    Line(u64),
    /// Global feed position of the embedded store.
    Seq(u64),
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pos::None => Ok(()),
            Pos::Line(n) => write!(f, "line {n}"),
            Pos::Seq(n) => write!(f, "seq {n}"),
        }
    }
}

/// An event as read from a source, with what the reader already checked.
#[derive(Clone, Debug)]
pub struct SourcedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// Where it was read.
    pub pos: Pos,
    /// The recomputed hash, when the reader was asked to compute it (done on the reader's thread).
    pub computed: Option<Hash>,
    /// Whether the stored bytes are exactly the canonical encoding of the parsed event.
    pub canonical: bool,
}

/// One item of a source: an event, a head pin, or something that could not be read.
// Nearly every entry is an event: boxing it would add an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Entry {
    /// A readable event.
    Event(SourcedEvent),
    /// A head pin (export files only).
    Pin(Pin, Pos),
    /// A stored item that is not a valid event or pin; reported, never skipped silently.
    Unreadable {
        /// Where.
        pos: Pos,
        /// The job, if it could be made out.
        job_id: Option<JobId>,
        /// The version, if it could be made out.
        version: Option<u64>,
        /// Why it could not be read.
        reason: String,
    },
}

impl Entry {
    /// The job this entry belongs to, if known.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Entry::Event(e) => Some(e.event.job_id),
            Entry::Pin(p, _) => Some(p.job_id),
            Entry::Unreadable { job_id, .. } => *job_id,
        }
    }
}

impl Entry {
    /// The entry as a consumer reads it, borrowed.
    pub fn item(&self) -> Item<'_> {
        match self {
            Entry::Event(e) => Item::Event(EventItem {
                head: e.event.head(),
                pos: e.pos,
                chain: Some(Chain {
                    prev_hash: e.event.prev_hash,
                    hash: e.event.hash,
                    computed: e.computed,
                    canonical: e.canonical,
                }),
                payload: Payload::Stored(&e.event),
            }),
            Entry::Pin(pin, pos) => Item::Pin(*pin, *pos),
            Entry::Unreadable {
                pos,
                job_id,
                version,
                reason,
            } => Item::Unreadable {
                pos: *pos,
                job_id: *job_id,
                version: *version,
                reason,
            },
        }
    }
}

/// The hash chain fields of an event and what its reader checked of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The stored `prev_hash`.
    pub prev_hash: Hash,
    /// The stored `hash`.
    pub hash: Hash,
    /// The recomputed hash, when the reader computed it.
    pub computed: Option<Hash>,
    /// Whether the stored bytes are exactly the canonical encoding of the parsed event.
    pub canonical: bool,
}

/// How an item's payload is reached.
#[derive(Debug)]
enum Payload<'a> {
    /// Decoded by the reader while it parsed the line (one pass, no copy of the text).
    Decoded(JobEvent),
    /// An event read in full; decoded on demand.
    Stored(&'a RecordedEvent),
}

/// One event as consumers read it: the envelope fields they use, borrowed from the reader, and
/// the payload, decoded on demand (or already decoded by a reader that decodes as it parses).
#[derive(Debug)]
pub struct EventItem<'a> {
    /// Job, version, type and time.
    pub head: EventHead<'a>,
    /// Where it was read.
    pub pos: Pos,
    /// The chain fields, when the scan was asked to check them (`verify`); folds go without.
    pub chain: Option<Chain>,
    payload: Payload<'a>,
}

impl<'a> EventItem<'a> {
    /// An event whose payload the reader already decoded (through `upcast::decode_prefix`).
    pub fn decoded(head: EventHead<'a>, pos: Pos, chain: Option<Chain>, event: JobEvent) -> Self {
        EventItem {
            head,
            pos,
            chain,
            payload: Payload::Decoded(event),
        }
    }

    /// The recomputed hash: the reader's, or computed now for an event read in full.
    pub fn computed_hash(&self) -> Option<Hash> {
        self.chain
            .and_then(|c| c.computed)
            .or_else(|| match self.payload {
                Payload::Stored(e) => Some(jobledger_events::chain::compute_hash(e)),
                Payload::Decoded(_) => None,
            })
    }

    /// The payload in the current schema (upcast when stored in an older one), as
    /// `RecordedEvent::decode` gives it.
    pub fn decode(self) -> Result<JobEvent, DecodeError> {
        match self.payload {
            Payload::Decoded(event) => Ok(event),
            Payload::Stored(e) => e.decode(),
        }
    }
}

/// One item of a scan, as consumers read it (see [`Entry`], its owned form).
// Nearly every item is an event, handed over once: boxing it would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Item<'a> {
    /// A readable event.
    Event(EventItem<'a>),
    /// A head pin (export files only).
    Pin(Pin, Pos),
    /// A stored item that is not a valid event or pin.
    Unreadable {
        /// Where.
        pos: Pos,
        /// The job, if it could be made out.
        job_id: Option<JobId>,
        /// The version, if it could be made out.
        version: Option<u64>,
        /// Why it could not be read.
        reason: &'a str,
    },
}

impl Item<'_> {
    /// The job this item belongs to, if known.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Item::Event(e) => Some(e.head.job_id),
            Item::Pin(p, _) => Some(p.job_id),
            Item::Unreadable { job_id, .. } => *job_id,
        }
    }
}

/// Reads one line of an export file as an item and hands it to `f`. Canonical event lines are
/// read in one pass with their payload decoded on the way and nothing copied; any other line goes
/// through [`parse_line`], so what is reported about it does not change.
pub fn visit_line(line: &[u8], pos: Pos, check: bool, f: impl FnOnce(Item<'_>)) {
    if !line.starts_with(b"{\"pin\"")
        && let Some(item) = crate::fastline::parse_item(line, pos, check)
    {
        return f(Item::Event(item));
    }
    f(parse_line(line, pos, check).item())
}

/// Wraps an event read from a store (no raw bytes to compare, so it counts as canonical).
pub fn sourced(event: RecordedEvent, pos: Pos, hash: bool) -> SourcedEvent {
    let computed = hash.then(|| jobledger_events::chain::compute_hash(&event));
    SourcedEvent {
        event,
        pos,
        computed,
        canonical: true,
    }
}

/// Parses one line of an export file. With `check`, also recomputes the hash and compares the
/// line with the canonical encoding (so a change the parser would forgive, like hex case, is seen).
pub fn parse_line(line: &[u8], pos: Pos, check: bool) -> Entry {
    if line.starts_with(b"{\"pin\"") {
        if let Some(pin) = crate::fastline::parse_pin(line) {
            return Entry::Pin(pin, pos);
        }
        return match serde_json::from_slice::<PinLine>(line) {
            Ok(p) => {
                if check && serde_json::to_vec(&p).ok().as_deref() != Some(line) {
                    return Entry::Unreadable {
                        pos,
                        job_id: Some(p.pin.job_id),
                        version: Some(p.pin.version),
                        reason: "pin line is not in canonical form".into(),
                    };
                }
                Entry::Pin(p.pin, pos)
            }
            Err(e) => unreadable(line, pos, format!("invalid pin line: {e}")),
        };
    }
    // Nearly every line is canonical: read it without the general path's three passes.
    if let Some(fast) = crate::fastline::parse_event(line, check) {
        return Entry::Event(SourcedEvent {
            event: fast.event,
            pos,
            computed: fast.computed,
            canonical: true,
        });
    }
    match serde_json::from_slice::<RecordedEvent>(line) {
        Ok(event) => {
            let (computed, canonical) = if check {
                let canonical = serde_json::to_vec(&event).ok().as_deref() == Some(line);
                (
                    Some(jobledger_events::chain::compute_hash(&event)),
                    canonical,
                )
            } else {
                (None, true)
            };
            Entry::Event(SourcedEvent {
                event,
                pos,
                computed,
                canonical,
            })
        }
        Err(e) => unreadable(line, pos, format!("invalid event line: {e}")),
    }
}

/// Makes out what it can of a damaged line, so the finding still names a job and version.
fn unreadable(line: &[u8], pos: Pos, reason: String) -> Entry {
    let text = String::from_utf8_lossy(line);
    let job_id = field_after(&text, "\"job_id\":\"")
        .and_then(|s| s.get(..36))
        .and_then(|s| s.parse().ok());
    let version = field_after(&text, "\"version\":").and_then(|s| {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Entry::Unreadable {
        pos,
        job_id,
        version,
        reason,
    }
}

fn field_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.find(key).map(|i| &text[i + key.len()..])
}

/// Whether a path names a zstd-compressed file.
pub fn is_zstd(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// Counts the bytes read through it (progress of a file scan).
struct Counting<R> {
    inner: R,
    count: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &self.count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Opens an export file for reading line by line, decompressing `.zst` (also recognised by its magic).
/// `count`, if given, follows the bytes of the file read so far.
pub fn open_reader(
    path: &Path,
    count: Option<Arc<AtomicU64>>,
) -> io::Result<Box<dyn BufRead + Send>> {
    let file = Counting {
        inner: File::open(path)?,
        count,
    };
    let mut file = BufReader::with_capacity(1 << 20, file);
    let magic = file.fill_buf()?;
    let zstd_magic = magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if zstd_magic || is_zstd(path) {
        let decoder = zstd::stream::read::Decoder::with_buffer(file)?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, decoder)))
    } else {
        Ok(Box::new(file))
    }
}

/// Reads the next line (without its `\n`) into `buf`; false at the end of the file.
pub fn next_line(reader: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    if reader.read_until(b'\n', buf)? == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(true)
}

/// Writes export files: each job's events, then its pin.
pub struct ExportWriter {
    out: Sink,
    /// Events written.
    pub events: u64,
    /// Jobs written.
    pub jobs: u64,
}

enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl ExportWriter {
    /// Creates (or truncates) `path`; compressed when it ends in `.zst`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let out = if is_zstd(path) {
            Sink::Zstd(zstd::stream::write::Encoder::new(file, 3)?)
        } else {
            Sink::Plain(file)
        };
        Ok(ExportWriter {
            out,
            events: 0,
            jobs: 0,
        })
    }

    fn sink(&mut self) -> &mut dyn Write {
        match &mut self.out {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w,
        }
    }

    /// Writes one job's whole history and its pin. An empty history writes nothing.
    pub fn write_job(&mut self, events: &[RecordedEvent]) -> io::Result<()> {
        let Some(pin) = Pin::of(events) else {
            return Ok(());
        };
        for e in events {
            self.write_event(e)?;
        }
        self.write_pin(&pin)
    }

    /// Writes one event line (the caller writes the job's pin after its last event).
    pub fn write_event(&mut self, e: &RecordedEvent) -> io::Result<()> {
        let sink = self.sink();
        serde_json::to_writer(&mut *sink, e)?;
        sink.write_all(b"\n")?;
        self.events += 1;
        Ok(())
    }

    /// Writes a pin line, closing a job.
    pub fn write_pin(&mut self, pin: &Pin) -> io::Result<()> {
        let sink = self.sink();
        serde_json::to_writer(&mut *sink, &PinLine { pin: *pin })?;
        sink.write_all(b"\n")?;
        self.jobs += 1;
        Ok(())
    }

    /// Flushes (and ends the zstd frame) and syncs the file to disk; it is complete only after this.
    pub fn finish(self) -> io::Result<()> {
        let file = match self.out {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w.finish()?,
        };
        // On disk before the caller renames it into place.
        file.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()
    }
}

/// Writes whole histories to a new export file at `path` (compressed when it ends in `.zst`).
pub fn write_export(path: &Path, jobs: &[Vec<RecordedEvent>]) -> io::Result<()> {
    let mut w = ExportWriter::create(path)?;
    for job in jobs {
        w.write_job(job)?;
    }
    w.finish()
}

/// Reads a whole (decompressed) file; for tests and small files.
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_reader(path, None)?.read_to_end(&mut out)?;
    Ok(out)
}
