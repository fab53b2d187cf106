//! Upcasters: old payload schemas are rewritten to the current one on read, in this one place.

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
    fn a_schema_from_the_future_is_an_error_not_a_guess() {
        let err = decode("JobQueued", 7, r#"{"attempt":1,"message_id":"m"}"#).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownSchema { schema: 7, .. }));
    }
}
