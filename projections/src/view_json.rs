//! `JobView` as JSON, byte for byte as `serde_json` writes it, for the view store's hot path.
//!
//! serde_json escapes every string one byte at a time, field names included: serialising the
//! views was a fifth of a rebuild's instructions, and half of that was escaping. Here field names
//! are written as they are, and a string value is copied whole when no byte of it needs escaping
//! (otherwise serde_json writes it); integers are written with `itoa`, as serde_json does, and
//! floats and nested values by serde_json itself. The tests hold this writer and
//! `serde_json::to_vec` equal on random views, and the exhaustive destructuring below stops the
//! build when `JobView` gains a field.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job_view::{JobView, json_time};

/// Appends `view` as JSON to `out`, exactly as `serde_json::to_writer(out, view)` would.
pub fn write(view: &JobView, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let JobView {
        job_id,
        kind,
        status,
        attempt,
        progress,
        created_at,
        updated_at,
        result_uri,
        result_sha256,
        usage,
        last_version,
        error,
        notify,
        metadata,
        failures,
        interruptions,
        total_interruptions,
        attempt_started_at,
        heartbeat_at,
        launched_at,
        finished_at,
        timeout_s,
        max_attempts,
        not_before,
        priority,
        task_arn,
        capacity,
        checkpoint_uri,
        cost_usd,
    } = view;
    // A job id is a hyphenated UUID: nothing in it needs escaping.
    write!(out, "{{\"job_id\":\"{job_id}\"").map_err(serde_json::Error::io)?;
    key(out, "kind");
    plain_string(out, kind.as_str());
    key(out, "status");
    plain_string(out, status.as_str());
    integer(out, "attempt", *attempt);
    field(out, "progress", progress)?;
    key(out, "created_at");
    time(out, created_at)?;
    key(out, "updated_at");
    time(out, updated_at)?;
    key(out, "result_uri");
    optional_string(out, result_uri.as_deref())?;
    key(out, "result_sha256");
    optional_string(out, result_sha256.as_deref())?;
    field(out, "usage", usage)?;
    integer(out, "last_version", *last_version);
    key(out, "error");
    optional_string(out, error.as_deref())?;
    field(out, "notify", notify)?;
    field(out, "metadata", metadata)?;
    integer(out, "failures", *failures);
    integer(out, "interruptions", *interruptions);
    integer(out, "total_interruptions", *total_interruptions);
    for (name, at) in [
        ("attempt_started_at", attempt_started_at),
        ("heartbeat_at", heartbeat_at),
        ("launched_at", launched_at),
        ("finished_at", finished_at),
    ] {
        key(out, name);
        optional_time(out, at.as_ref())?;
    }
    integer(out, "timeout_s", *timeout_s);
    integer(out, "max_attempts", *max_attempts);
    key(out, "not_before");
    optional_time(out, not_before.as_ref())?;
    integer(out, "priority", *priority);
    key(out, "task_arn");
    optional_string(out, task_arn.as_deref())?;
    field(out, "capacity", capacity)?;
    key(out, "checkpoint_uri");
    optional_string(out, checkpoint_uri.as_deref())?;
    field(out, "cost_usd", cost_usd)?;
    out.push(b'}');
    Ok(())
}

/// `,"name":` (field names are plain ASCII, never escaped).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A field whose value serde_json writes.
fn field(out: &mut Vec<u8>, name: &str, value: &impl Serialize) -> serde_json::Result<()> {
    key(out, name);
    serde_json::to_writer(&mut *out, value)
}

/// An integer field, as serde_json writes it (with `itoa`).
fn integer(out: &mut Vec<u8>, name: &str, value: impl itoa::Integer) {
    key(out, name);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A string known to need no escaping (an enum's name, a time).
fn plain_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Whether serde_json escapes any byte of `text`: control characters, `"` and `\`, nothing
/// else. No early exit, so the check runs many bytes at a time.
fn needs_escaping(text: &str) -> bool {
    text.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// A string, copied whole when serde_json would not escape any of it.
fn string(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if needs_escaping(text) {
        serde_json::to_writer(&mut *out, text)
    } else {
        plain_string(out, text);
        Ok(())
    }
}

fn optional_string(out: &mut Vec<u8>, text: Option<&str>) -> serde_json::Result<()> {
    match text {
        Some(text) => string(out, text),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// A time as `json_time` writes it.
fn time(out: &mut Vec<u8>, at: &DateTime<Utc>) -> serde_json::Result<()> {
    match json_time::text(at)
        .as_ref()
        .and_then(json_time::Text::as_str)
    {
        Some(text) => {
            plain_string(out, text);
            Ok(())
        }
        None => serde_json::to_writer(&mut *out, at),
    }
}

fn optional_time(out: &mut Vec<u8>, at: Option<&DateTime<Utc>>) -> serde_json::Result<()> {
    match at {
        Some(at) => time(out, at),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jobledger_events::event::{Capacity, Usage};
    use jobledger_events::{JobId, JobKind, Status};
    use proptest::prelude::*;

    fn same_as_serde(view: &JobView) {
        let mut ours = Vec::new();
        write(view, &mut ours).unwrap();
        let theirs = serde_json::to_vec(view).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn a_folded_view_is_written_as_serde_json_writes_it() {
        same_as_serde(&crate::fixture_view());
    }

    /// Text that often needs escaping: quotes, backslashes, control characters, and any Unicode.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é€😀/]{0,12}",
            "[ -~]{0,40}",
        ]
    }

    /// Times in and out of `json_time`'s four-digit years, with every kind of fraction.
    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        let seconds = prop_oneof![
            0i64..4_102_444_800,
            -62_200_000_000i64..-62_000_000_000,
            253_402_300_000i64..253_500_000_000,
        ];
        let nanos = prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|ms| ms * 1_000_000),
            (0u32..1_000_000).prop_map(|us| us * 1000),
            0u32..2_000_000_000,
        ];
        (seconds, nanos).prop_filter_map("a time chrono can hold", |(s, n)| {
            Utc.timestamp_opt(s, n).single()
        })
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.004_200_000_000_000_001)
        ]
    }

    prop_compose! {
        fn usage()(
            duration_ms in any::<u64>(),
            vcpu in number(),
            memory_mb in any::<u64>(),
            spot in any::<Option<bool>>(),
            input_tokens in any::<u64>(),
            output_tokens in any::<u64>(),
            model in proptest::option::of(text()),
            cost_usd in number(),
        ) -> Usage {
            Usage {
                duration_ms,
                vcpu,
                memory_mb,
                capacity: spot.map(|s| if s { Capacity::FargateSpot } else { Capacity::Fargate }),
                input_tokens,
                output_tokens,
                model,
                cost_usd,
            }
        }
    }

    prop_compose! {
        fn view()(
            kind in proptest::sample::select(vec![
                JobKind::ImageAlt,
                JobKind::MetaDescription,
                JobKind::ContentAnalysis,
                JobKind::Noop,
            ]),
            status in proptest::sample::select(Status::ALL.to_vec()),
            numbers in (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<i32>()),
            times in (time(), time(), proptest::option::of(time()), proptest::option::of(time())),
            strings in (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            usage in proptest::option::of(usage()),
            metadata in proptest::collection::btree_map(text(), text(), 0..3),
            cost_usd in number(),
            spot in any::<Option<bool>>(),
        ) -> JobView {
            let mut view = crate::fixture_view();
            view.job_id = JobId::new();
            view.kind = kind;
            view.status = status;
            (view.attempt, view.last_version, view.failures, view.timeout_s, view.priority) = numbers;
            (view.created_at, view.updated_at, view.heartbeat_at, view.not_before) = times;
            view.finished_at = view.not_before;
            (view.result_uri, view.error, view.task_arn, view.checkpoint_uri) = strings;
            view.result_sha256 = view.result_uri.clone();
            view.usage = usage;
            view.metadata = metadata
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            view.cost_usd = cost_usd;
            view.capacity = spot.map(|s| if s { Capacity::FargateSpot } else { Capacity::Fargate });
            view
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_view_is_written_as_serde_json_writes_it(view in view()) {
            same_as_serde(&view);
        }
    }
}
