//! Runs a consumer over a full scan on a blocking thread (the source reads on another), with an
//! optional progress bar showing rate and ETA; or one consumer per part of a split scan, run on
//! the part's own reader thread, so every core reads and folds whole jobs of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::{Entry, Item};
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

/// How many parts a split scan uses: one per core.
pub fn default_parts() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Items a part counts before it adds them to the shared count (one shared write per this many).
const COUNT_EVERY: u64 = 1024;

/// A part's state with the items it has not yet added to the shared count.
struct Counted<T> {
    state: T,
    uncounted: u64,
}

/// Feeds every item of `src` to `f(&mut state, item)` over a scan split in up to `parts` parts
/// (see [`HistorySource::visit_parts`]), each with a state of its own made by `make`, folded on
/// the thread that reads it. Returns the states, one per part, for the caller to merge.
pub async fn drive_parts<S, T, M, F>(
    src: &S,
    check: bool,
    show: bool,
    what: &str,
    parts: usize,
    make: M,
    f: F,
) -> Result<Vec<T>, SourceError>
where
    S: HistorySource,
    T: Send + 'static,
    M: Fn() -> T,
    F: Fn(&mut T, Item<'_>) + Send + Sync + 'static,
{
    let total = if show {
        src.extent().await.unwrap_or(0)
    } else {
        0
    };
    let position = Arc::new(AtomicU64::new(0));
    let entries = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&entries);
    let handles = src.visit_parts(
        check,
        parts,
        Arc::clone(&position),
        || Counted {
            state: make(),
            uncounted: 0,
        },
        move |c: &mut Counted<T>, item| {
            c.uncounted += 1;
            if c.uncounted == COUNT_EVERY {
                counter.fetch_add(COUNT_EVERY, Ordering::Relaxed);
                c.uncounted = 0;
            }
            f(&mut c.state, item);
        },
    )?;
    let bar = bar(total, show, what);
    let started = std::time::Instant::now();
    let mut states = Vec::with_capacity(handles.len());
    for handle in handles {
        // Joined on the blocking pool, so the bar keeps moving meanwhile.
        let mut joined = tokio::task::spawn_blocking(move || handle.join());
        let state = loop {
            tokio::select! {
                done = &mut joined => break done,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let n = entries.load(Ordering::Relaxed);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_position(position.load(Ordering::Relaxed));
                    bar.set_message(format!("{n} entries, {rate:.0}/s"));
                }
            }
        };
        let state = state
            .map_err(|e| SourceError::Unavailable(format!("reader thread failed: {e}")))?
            .map_err(|_| SourceError::Unavailable("reader thread panicked".into()))??;
        states.push(state.state);
    }
    bar.finish_and_clear();
    Ok(states)
}
