//! `rebuild` around its edges: a read model without saved stats, and a view store that fails
//! in the middle of a rebuild.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use jobledger_projections::testing::{ViewCall, WatchedViews};
use jobledger_projections::{SqliteViewStore, Stats, ViewError, ViewStore};
use jobledger_replay::format::write_export;
use jobledger_replay::synth::Synth;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{FileSource, SqliteSource};

/// A ledger of `jobs` generated jobs at `dir/ledger.sqlite3`.
async fn ledger(dir: &Path, jobs: usize) -> SqliteSource {
    let file = dir.join("export.jsonl");
    write_export(&file, &Synth::new(11).jobs(jobs)).unwrap();
    jobledger_replay::transfer::import(&file, &dir.join("ledger.sqlite3"), false, false)
        .await
        .unwrap();
    SqliteSource::open(&dir.join("ledger.sqlite3")).unwrap()
}

#[tokio::test]
async fn a_live_read_model_without_saved_stats_has_no_differences_until_its_stats_go_stale() {
    let dir = tempfile::tempdir().unwrap();
    let src = ledger(dir.path(), 30).await;
    let views = SqliteViewStore::open(dir.path().join("views.sqlite3")).unwrap();
    // The live projector's read model: job views, and no saved stats (only a rebuild saves them).
    rebuild(&src, &views, Projection::Jobs, false, false)
        .await
        .unwrap();
    assert_eq!(views.load_stats().await.unwrap(), None);

    let dry = rebuild(&src, &views, Projection::All, true, false)
        .await
        .unwrap();
    assert_eq!(dry.diff_count, 0, "{:#?}", dry.diffs);
    assert!(dry.stats_diff.is_empty(), "{:#?}", dry.stats_diff);
    assert!(!dry.stats_saved);

    // Saved stats that no longer match the ledger are a difference, field by field.
    let all = views.all().await.unwrap();
    let stale = Stats::from_views(&all[..20], Default::default());
    views.save_stats(&stale).await.unwrap();
    let dry = rebuild(&src, &views, Projection::Stats, true, false)
        .await
        .unwrap();
    assert!(dry.stats_saved);
    assert!(dry.stats_diff.contains_key("jobs"), "{:#?}", dry.stats_diff);
    assert_eq!(dry.stats_diff["jobs"].0, 20);
    assert_eq!(dry.stats_diff["jobs"].1, 30);
    assert_eq!(dry.diff_count, 0);
}

#[tokio::test]
async fn a_rebuild_whose_writes_fail_says_the_read_model_is_incomplete_and_keeps_saved_stats() {
    let dir = tempfile::tempdir().unwrap();
    // More jobs than one write batch, so some batches land before the failing one.
    let src = ledger(dir.path(), 3000).await;
    let views = SqliteViewStore::open(dir.path().join("views.sqlite3")).unwrap();
    rebuild(&src, &views, Projection::All, false, false)
        .await
        .unwrap();
    let saved = views.load_stats().await.unwrap().unwrap();
    let live = views.all().await.unwrap();
    assert_eq!(live.len(), 3000);

    // Batch writes fail once they reach one job's view.
    let poisoned = live[1500].job_id;
    let failing = WatchedViews::new(views.clone(), move |call| match call {
        ViewCall::UpsertMany(batch) if batch.iter().any(|v| v.job_id == poisoned) => {
            Err(ViewError::backend(false, "disk I/O error"))
        }
        _ => Ok(()),
    });
    let err = rebuild(&src, &failing, Projection::Jobs, false, false)
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("rebuild stopped after writing"),
        "{message}"
    );
    assert!(message.contains("of 3000 view(s)"), "{message}");
    assert!(message.contains("run rebuild again"), "{message}");
    assert!(message.contains("disk I/O error"), "{message}");
    // The jobs-only rebuild cleared the views but put the stats back before writing any view.
    assert_eq!(views.load_stats().await.unwrap(), Some(saved));
    assert!(views.all().await.unwrap().len() < 3000);
    // The dry run sees what is missing; a rebuild that can write mends it.
    let dry = rebuild(&src, &views, Projection::All, true, false)
        .await
        .unwrap();
    assert!(dry.diffs.iter().all(|d| d.change == "missing"));
    assert!(dry.diff_count > 0);
    rebuild(
        &FileSource::open(&dir.path().join("export.jsonl")).unwrap(),
        &views,
        Projection::All,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(views.all().await.unwrap(), live);
}

/// Waits until no connection has the read model at `path` open: a store just dropped closes its
/// checkpoint thread's connection a moment later.
fn wait_closed(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while jobledger_projections::Replacement::claim(path)
        .unwrap()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "still open");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[tokio::test]
async fn an_embedded_rebuild_replaces_a_closed_read_model_and_writes_in_place_beside_an_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = ledger(dir.path(), 300).await;
    let reference = SqliteViewStore::open(dir.path().join("reference.sqlite3")).unwrap();
    rebuild(&src, &reference, Projection::All, false, false)
        .await
        .unwrap();
    let expected = reference.all().await.unwrap();
    let expected_stats = reference.load_stats().await.unwrap().unwrap();

    // A stale read model: a view the ledger lacks, and stats of another time.
    let path = dir.path().join("views.sqlite3");
    let mut extra = expected[0].clone();
    extra.job_id = jobledger_events::JobId::new();
    let stale_stats = Stats::from_views(&expected[..10], Default::default());
    {
        let stale = SqliteViewStore::open(&path).unwrap();
        stale.upsert(&extra).await.unwrap();
        stale.save_stats(&stale_stats).await.unwrap();
    }
    wait_closed(&path);
    let before = inode(&path);
    // Jobs only: the views are replaced, the saved stats carried over untouched.
    let report =
        jobledger_replay::views::rebuild_embedded(&src, &path, Projection::Jobs, false, false)
            .await
            .unwrap();
    assert_eq!(report.written, 300);
    assert_ne!(inode(&path), before, "the read model was not replaced");
    {
        let views = SqliteViewStore::open(&path).unwrap();
        assert_eq!(views.all().await.unwrap(), expected);
        assert_eq!(views.load_stats().await.unwrap(), Some(stale_stats));
        // Beside an open store (a running `jobledger dev`): in place, seen by it at once.
        views.upsert(&extra).await.unwrap();
        let before = inode(&path);
        jobledger_replay::views::rebuild_embedded(&src, &path, Projection::All, false, false)
            .await
            .unwrap();
        assert_eq!(inode(&path), before);
        assert_eq!(views.all().await.unwrap(), expected);
        assert_eq!(
            views.load_stats().await.unwrap(),
            Some(expected_stats.clone())
        );
    }
    wait_closed(&path);
    // All, replaced again: the same views and stats as the in-place rebuild.
    jobledger_replay::views::rebuild_embedded(&src, &path, Projection::All, false, false)
        .await
        .unwrap();
    let views = SqliteViewStore::open(&path).unwrap();
    assert_eq!(views.all().await.unwrap(), expected);
    assert_eq!(views.load_stats().await.unwrap(), Some(expected_stats));
}

#[tokio::test]
async fn an_embedded_rebuild_that_fails_leaves_the_old_read_model_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let src = ledger(dir.path(), 30).await;
    let path = dir.path().join("views.sqlite3");
    {
        let views = SqliteViewStore::open(&path).unwrap();
        rebuild(&src, &views, Projection::All, false, false)
            .await
            .unwrap();
    }
    wait_closed(&path);
    let before = std::fs::read(&path).unwrap();
    // The ledger goes away under the rebuild's readers.
    std::fs::rename(
        dir.path().join("ledger.sqlite3"),
        dir.path().join("moved.sqlite3"),
    )
    .unwrap();
    let err = jobledger_replay::views::rebuild_embedded(&src, &path, Projection::All, false, false)
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("is as it was"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(!std::fs::exists(dir.path().join("views.sqlite3.rebuilding")).unwrap());
    let views = SqliteViewStore::open(&path).unwrap();
    assert_eq!(views.all().await.unwrap().len(), 30);
}
