//! What a client submits: the job spec, and its validation (one clear message per field).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of work a job can do. `noop` exists for smoke tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Image → alt text.
    ImageAlt,
    /// Page text → a description of at most 155 characters.
    MetaDescription,
    /// Text → topics, keywords, readability, language, structure.
    ContentAnalysis,
    /// Does nothing per item; measures the pipeline itself.
    Noop,
}

impl JobKind {
    /// Every kind, in a stable order.
    pub const ALL: [JobKind; 4] = [
        JobKind::ImageAlt,
        JobKind::MetaDescription,
        JobKind::ContentAnalysis,
        JobKind::Noop,
    ];

    /// The wire name, e.g. `image_alt`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::ImageAlt => "image_alt",
            JobKind::MetaDescription => "meta_description",
            JobKind::ContentAnalysis => "content_analysis",
            JobKind::Noop => "noop",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One input item of a batch. Exactly one of the content fields is expected, depending on the kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The caller's id for the item; results carry it back.
    pub id: String,
    /// Plain text (or Markdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An HTML page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// An image, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_base64: Option<String>,
    /// A reference to the content in the object store (`s3://bucket/key` or `file://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// Where a job's items come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobInput {
    /// Items given inline in the request.
    Items {
        /// The items.
        items: Vec<Item>,
    },
    /// A JSONL file in the object store, one item per line.
    Uri {
        /// `s3://bucket/key.jsonl` or a local object store URI.
        input_uri: String,
    },
}

/// Which notification sinks a job wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Post to Slack.
    #[serde(default = "yes")]
    pub slack: bool,
    /// Log in Notion.
    #[serde(default = "yes")]
    pub notion: bool,
}

fn yes() -> bool {
    true
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            slack: true,
            notion: true,
        }
    }
}

/// A submitted job, as recorded in `JobSubmitted`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The kind of work.
    pub kind: JobKind,
    /// The items, inline or by URI.
    #[serde(flatten)]
    pub input: JobInput,
    /// How many attempts may fail before the job fails (1–10).
    pub max_attempts: u32,
    /// Wall-clock limit of one attempt, in seconds (60–86,400).
    pub timeout_s: u32,
    /// Higher runs first where a backend can order work.
    #[serde(default)]
    pub priority: i32,
    /// Notification opt-outs.
    #[serde(default)]
    pub notify: Notify,
    /// Free-form caller metadata (at most 2 KiB as JSON).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The `Idempotency-Key` the job was submitted with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Most model tokens (input + output) the job may use; once spent, remaining items fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// Limits a job spec must respect.
pub mod limits {
    /// Most inline items in one job.
    pub const MAX_ITEMS: usize = 10_000;
    /// Most bytes of inline input (items as JSON).
    pub const MAX_INLINE_BYTES: usize = 256 * 1024;
    /// Attempts allowed.
    pub const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=10;
    /// Attempt timeout bounds, seconds.
    pub const TIMEOUT_S: std::ops::RangeInclusive<u32> = 60..=86_400;
    /// Most bytes of metadata (as JSON).
    pub const MAX_METADATA_BYTES: usize = 2 * 1024;
    /// Token budget bounds (`max_tokens`).
    pub const MAX_TOKENS: std::ops::RangeInclusive<u64> = 1..=10_000_000;
    /// Idempotency key length bounds.
    pub const IDEMPOTENCY_KEY_LEN: std::ops::RangeInclusive<usize> = 1..=128;
    /// Largest integer stored exactly: RFC 8785 writes every number as an IEEE double.
    pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
}

/// One invalid field of a spec, with a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field, e.g. `items` or `metadata`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl JobSpec {
    /// Checks every limit; returns every invalid field, not just the first.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_string(),
                message,
            })
        };
        match &self.input {
            JobInput::Items { items } => {
                if items.is_empty() || items.len() > limits::MAX_ITEMS {
                    err(
                        "items",
                        format!(
                            "must hold 1 to {} items, got {}",
                            limits::MAX_ITEMS,
                            items.len()
                        ),
                    );
                }
                let bytes = serde_json::to_vec(items)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if bytes > limits::MAX_INLINE_BYTES {
                    err(
                        "items",
                        format!(
                            "inline input is {bytes} bytes, more than {} (256 KiB); upload it and pass input_uri",
                            limits::MAX_INLINE_BYTES
                        ),
                    );
                }
                if let Some(pos) = items.iter().position(|i| i.id.is_empty()) {
                    err("items", format!("item {pos} has an empty id"));
                }
            }
            JobInput::Uri { input_uri } => {
                if !(input_uri.starts_with("s3://") || input_uri.starts_with("file://")) {
                    err(
                        "input_uri",
                        format!("must be an s3:// or file:// URI, got {input_uri:?}"),
                    );
                }
            }
        }
        if !limits::MAX_ATTEMPTS.contains(&self.max_attempts) {
            err(
                "max_attempts",
                format!("must be 1 to 10, got {}", self.max_attempts),
            );
        }
        if !limits::TIMEOUT_S.contains(&self.timeout_s) {
            err(
                "timeout_s",
                format!("must be 60 to 86400 seconds, got {}", self.timeout_s),
            );
        }
        let meta_bytes = serde_json::to_vec(&self.metadata)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let unsafe_path = self
            .metadata
            .iter()
            .find_map(|(k, v)| unsafe_integer(v, &format!("metadata.{k}")));
        if meta_bytes > limits::MAX_METADATA_BYTES {
            err(
                "metadata",
                format!("is {meta_bytes} bytes as JSON, more than 2048 (2 KiB)"),
            );
        } else if let Some(path) = unsafe_path {
            err(
                "metadata",
                format!(
                    "{path} is an integer beyond ±{} (2^53 - 1), which JSON ledgers cannot store exactly; send it as a string",
                    limits::MAX_SAFE_INTEGER
                ),
            );
        }
        if let Some(max) = self.max_tokens
            && !limits::MAX_TOKENS.contains(&max)
        {
            err(
                "max_tokens",
                format!("must be 1 to 10000000 model tokens for the whole job, got {max}"),
            );
        }
        if let Some(key) = &self.idempotency_key
            && let Err(message) = validate_idempotency_key(key)
        {
            err("idempotency_key", message);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The spec exactly as the ledger will give it back: metadata numbers pass through their
    /// canonical (RFC 8785) form, so e.g. `5.0` becomes `5`. The aggregate records this, which keeps
    /// the live state equal to the state folded from the stored history.
    pub fn as_recorded(&self) -> JobSpec {
        let metadata = serde_json::Value::Object(self.metadata.clone());
        let canonical = crate::chain::canonical_json(&metadata);
        match serde_json::from_str(&canonical) {
            Ok(serde_json::Value::Object(metadata)) => JobSpec {
                metadata,
                ..self.clone()
            },
            // Canonical JSON of a map always parses back to a map; keep the spec as given otherwise.
            _ => self.clone(),
        }
    }
}

/// The path of the first integer outside ±(2^53 − 1) in `value`, if any.
fn unsafe_integer(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            let safe = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= limits::MAX_SAFE_INTEGER,
                (None, Some(i)) => i.unsigned_abs() <= limits::MAX_SAFE_INTEGER,
                // A float: stored as its shortest round-trip form, exactly.
                (None, None) => true,
            };
            (!safe).then(|| path.to_string())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| unsafe_integer(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| unsafe_integer(v, &format!("{path}.{k}"))),
        _ => None,
    }
}

/// An idempotency key is 1–128 printable ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    // Count characters, not bytes, so a non-ASCII key is told it is not ASCII rather than a
    // misleading length.
    let chars = key.chars().count();
    if !limits::IDEMPOTENCY_KEY_LEN.contains(&chars) {
        return Err(format!("must be 1 to 128 characters, got {chars}"));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be printable ASCII (0x20 to 0x7e)".to_string());
    }
    Ok(())
}
