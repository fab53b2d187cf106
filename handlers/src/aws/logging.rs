//! Structured JSON logs for the Lambdas: one JSON object per line, carrying the fields of the
//! current span (`job_id`, `attempt`, `event_id`, `correlation_id`, set by the glue per record).

use lambda_runtime::tracing::Subscriber;
use lambda_runtime::tracing::subscriber::fmt::MakeWriter;
use lambda_runtime::tracing::subscriber::{self, EnvFilter};

/// The JSON subscriber writing to `writer`, at the level `filter` allows.
pub fn json_subscriber<W>(writer: W, filter: EnvFilter) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}

/// Installs the JSON subscriber on stdout; the level comes from `RUST_LOG` (default `info`).
///
/// Calling it twice is harmless (the second install is refused and ignored), so tests may call it.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = lambda_runtime::tracing::subscriber::util::SubscriberInitExt::try_init(
        json_subscriber(std::io::stdout, filter),
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_is_json_with_the_fields_of_the_record_span() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = json_subscriber(move || sink.clone(), EnvFilter::new("info"));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "event",
                job_id = "j-1",
                attempt = 2,
                event_id = "e-1",
                correlation_id = "c-1"
            );
            let _entered = span.enter();
            tracing::info!(task_arn = "arn:t", "worker launched");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "worker launched");
        assert_eq!(line["task_arn"], "arn:t");
        assert_eq!(line["level"], "INFO");
        let span = &line["span"];
        assert_eq!(
            (
                &span["job_id"],
                &span["attempt"],
                &span["event_id"],
                &span["correlation_id"]
            ),
            (
                &serde_json::json!("j-1"),
                &serde_json::json!(2),
                &serde_json::json!("e-1"),
                &serde_json::json!("c-1")
            )
        );
    }
}
