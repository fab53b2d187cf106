//! Runs a consumer over a full scan on a blocking thread (the source reads on another), with an
//! optional progress bar showing rate and ETA.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::Entry;
use crate::source::{HistorySource, SourceError};

/// A progress bar over a scan's extent; hidden when `show` is false or stderr is not a terminal.
pub fn bar(total: u64, show: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(5));
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// Feeds every entry of `src` to `f(&mut state, entry)` on the blocking pool and returns the state.
/// Reading (and, with `check`, hashing) runs on the source's own thread or task meanwhile.
pub async fn drive<S, T, F>(
    src: &S,
    check: bool,
    show: bool,
    what: &str,
    state: T,
    mut f: F,
) -> Result<T, SourceError>
where
    S: HistorySource,
    T: Send + 'static,
    F: FnMut(&mut T, Entry) + Send + 'static,
{
    let total = if show {
        src.extent().await.unwrap_or(0)
    } else {
        0
    };
    let position = Arc::new(AtomicU64::new(0));
    let mut feed = src.scan(check, Arc::clone(&position))?;
    let bar = bar(total, show, what);
    let started = std::time::Instant::now();
    let handle = tokio::task::spawn_blocking(move || {
        let mut state = state;
        let mut entries = 0u64;
        let mut last_draw = started;
        while let Some(batch) = feed.blocking_recv() {
            let batch = batch?;
            entries += batch.len() as u64;
            for entry in batch {
                f(&mut state, entry);
            }
            if last_draw.elapsed() >= Duration::from_millis(200) {
                last_draw = std::time::Instant::now();
                let rate = entries as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_position(position.load(Ordering::Relaxed));
                bar.set_message(format!("{entries} entries, {rate:.0}/s"));
            }
        }
        bar.finish_and_clear();
        Ok::<T, SourceError>(state)
    });
    handle
        .await
        .map_err(|e| SourceError::Unavailable(format!("consumer thread failed: {e}")))?
}
