//! Structured JSON logs for the Lambdas: one JSON object per line, carrying the fields of the
//! current span (`job_id`, `attempt`, `event_id`, `correlation_id`, set by the glue per record).

use lambda_runtime::tracing::subscriber::{self, EnvFilter};

/// Installs the JSON subscriber; the level comes from `RUST_LOG` (default `info`).
///
/// Calling it twice is harmless (the second install is refused and ignored), so tests may call it.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}
