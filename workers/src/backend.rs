//! AI backends: the `Backend` port every job kind calls, and the offline `builtin` backend.
//! The model backends (OpenAI-compatible, Bedrock) are in [`crate::backends`].
//!
//! A model backend (Bedrock Converse, an OpenAI-compatible endpoint) implements the same three
//! calls: it gets the decoded image (bytes and MIME type) or the extracted document, and returns
//! its output with the tokens it used, the model id and the cost, which the runtime adds up into
//! the attempt's `Usage`.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::kinds::document::Document;
use crate::kinds::image_alt::ImageInput;
use crate::kinds::{analysis, image_alt, meta};

/// What one call of a backend used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemUsage {
    /// Model input tokens.
    pub input_tokens: u64,
    /// Model output tokens.
    pub output_tokens: u64,
    /// The model, if a model was called.
    pub model: Option<String>,
    /// What the call cost (tokens × the backend's price), in USD.
    pub cost_usd: f64,
}

/// A backend's answer for one item.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The kind's output object (written to the results file as is).
    pub output: serde_json::Value,
    /// What producing it used.
    pub usage: ItemUsage,
}

/// Why an item produced no output.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ItemError {
    /// The item itself is bad (undecodable, empty, too large): it fails, the job goes on.
    #[error("{0}")]
    Invalid(String),
    /// The model was called but the item still failed (unusable reply after a retry, refused
    /// content, token budget spent): the item fails with the reason and the tokens it used.
    #[error("{reason}")]
    Failed {
        /// Why, for the results file.
        reason: String,
        /// What the failed calls used (billed all the same).
        usage: ItemUsage,
    },
    /// The backend or a store could not answer: the attempt fails (and may be retried).
    #[error("{message}")]
    Unavailable {
        /// Whether a later attempt may succeed (throttling, timeouts, 5xx).
        retryable: bool,
        /// What went wrong.
        message: String,
    },
}

/// An AI backend: one call per item and kind. Implementations must be safe to call concurrently.
pub trait Backend: Send + Sync {
    /// A short name for logs and usage (`builtin`, `bedrock`, `openai`).
    fn name(&self) -> &str;

    /// Alt text for a decoded image; the output has at least `alt_text`.
    fn alt_text(
        &self,
        image: &ImageInput,
    ) -> impl Future<Output = Result<Generated, ItemError>> + Send;

    /// A description of at most 155 characters; the output has at least `description`.
    fn meta_description(
        &self,
        doc: &Document,
    ) -> impl Future<Output = Result<Generated, ItemError>> + Send;

    /// Topics, keywords, readability, language and structure of a text.
    fn analyse(&self, doc: &Document) -> impl Future<Output = Result<Generated, ItemError>> + Send;
}

/// The offline backend: deterministic heuristics, no network, no tokens, no cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinBackend;

fn to_output(value: impl Serialize) -> Result<Generated, ItemError> {
    let output = serde_json::to_value(value).map_err(|e| ItemError::Unavailable {
        retryable: false,
        message: format!("cannot serialise output: {e}"),
    })?;
    Ok(Generated {
        output,
        usage: ItemUsage::default(),
    })
}

/// Runs CPU-bound work off the async threads, so a big image does not stall progress reports.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ItemError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ItemError::Unavailable {
            retryable: false,
            message: format!("builtin backend task failed: {e}"),
        })
}

impl Backend for BuiltinBackend {
    fn name(&self) -> &str {
        "builtin"
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        let image = image.clone();
        to_output(blocking(move || image_alt::describe(&image)).await?)
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        match meta::describe(doc) {
            Some(d) => to_output(d),
            None => Err(ItemError::Invalid("no readable text to describe".into())),
        }
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        let doc = doc.clone();
        match blocking(move || analysis::analyse(&doc)).await? {
            Some(a) => to_output(a),
            None => Err(ItemError::Invalid("no words to analyse".into())),
        }
    }
}
