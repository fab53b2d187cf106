//! Upcasters: old payload schemas are rewritten to the current one on read, in this one place.

use serde::Deserialize;
use serde_json::Value;

use crate::event::{DecodeError, JobEvent, current_schema};

/// Decodes a stored payload of any known schema into the current event.
pub fn decode(event_type: &str, schema: u32, data: &str) -> Result<JobEvent, DecodeError> {
    let current = current_schema(event_type);
    if schema == current {
        return JobEvent::decode_current(event_type, data);
    }
    if schema == 0 || schema > current {
        return Err(DecodeError::UnknownSchema {
            event_type: event_type.to_string(),
            schema,
            current,
        });
    }
    let mut value: Value = serde_json::from_str(data).map_err(|source| DecodeError::Payload {
        event_type: event_type.to_string(),
        source,
    })?;
    for from in schema..current {
        value = upcast_one(event_type, from, value)?;
    }
    JobEvent::decode_current(event_type, &value.to_string())
}

/// Decodes a stored payload of any known schema that starts `text` (see
/// [`JobEvent::decode_current_prefix`]); returns the current event and the payload's length.
/// Gives the same event as [`decode`] of the payload's own text; error positions differ.
pub fn decode_prefix(
    event_type: &str,
    schema: u32,
    text: &[u8],
) -> Result<(JobEvent, usize), DecodeError> {
    if schema == current_schema(event_type) {
        return JobEvent::decode_current_prefix(event_type, text);
    }
    // Old schemas are rare: find the payload's end, then take the one upcasting path.
    let mut de = serde_json::Deserializer::from_slice(text);
    let raw = <&serde_json::value::RawValue>::deserialize(&mut de).map_err(|source| {
        DecodeError::Payload {
            event_type: event_type.to_string(),
            source,
        }
    })?;
    let end = raw.get().as_ptr() as usize - text.as_ptr() as usize + raw.get().len();
    Ok((decode(event_type, schema, raw.get())?, end))
}

/// One step: schema `from` → `from + 1`.
fn upcast_one(event_type: &str, from: u32, mut value: Value) -> Result<Value, DecodeError> {
    match (event_type, from) {
        // Schema 1 counted only successes; failed items were added in schema 2.
        ("ProgressReported", 1) => {
            if let Value::Object(map) = &mut value {
                map.entry("failed").or_insert(Value::from(0u64));
            }
            Ok(value)
        }
        _ => Err(DecodeError::UnknownSchema {
            event_type: event_type.to_string(),
            schema: from,
            current: current_schema(event_type),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_schema_1_is_read_as_schema_2_with_no_failed_items() {
        let event = decode(
            "ProgressReported",
            1,
            r#"{"attempt":1,"done":5,"total":10}"#,
        )
        .unwrap();
        match event {
            JobEvent::ProgressReported(p) => {
                assert_eq!((p.done, p.failed, p.total), (5, 0, 10));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_payload_at_the_start_of_a_longer_text_decodes_as_it_does_alone() {
        for (event_type, schema, data) in [
            (
                "ProgressReported",
                1,
                r#"{"attempt":1,"done":5,"total":10}"#,
            ),
            (
                "ProgressReported",
                2,
                r#"{"attempt":1,"done":5,"failed":1,"total":10}"#,
            ),
            ("JobQueued", 1, r#"{"attempt":1,"message_id":"m \" }"}"#),
            ("JobCancelled", 1, "{}"),
        ] {
            let text = format!("{data},\"at\":\"2025\"}}");
            let (event, len) = decode_prefix(event_type, schema, text.as_bytes()).unwrap();
            assert_eq!(len, data.len(), "{data}");
            assert_eq!(event, decode(event_type, schema, data).unwrap());
        }
        for (event_type, schema, text) in [
            ("JobQueued", 1, r#"{"attempt":"1","message_id":"m"},"#),
            ("ProgressReported", 1, r#"{"attempt":1"#),
            ("JobQueued", 7, r#"{"attempt":1,"message_id":"m"},"#),
            ("Nope", 1, "{},"),
        ] {
            assert!(
                decode_prefix(event_type, schema, text.as_bytes()).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_schema_from_the_future_is_an_error_not_a_guess() {
        let err = decode("JobQueued", 7, r#"{"attempt":1,"message_id":"m"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownSchema { schema: 7, .. }));
    }
}
