//! A rebuild of the embedded read model into a new file that replaces the old one whole.
//!
//! Written in place, a rebuild first empties the old table (reading every page of it) and then
//! writes every page twice, to the WAL and back into the file. Written into a new file without a
//! journal, then synced and renamed over the old one, each page is written once, and the old read
//! model stays whole until the new one is complete. That needs the old file to itself:
//! [`Replacement::claim`] takes it only when no other connection has it open, and keeps every
//! other connection out until the new file is in place.
//!
//! The claim also takes the old file out of WAL mode. A process that opened the old file while
//! it was claimed, and waits for its lock, would otherwise write after the swap to a WAL named
//! like the new file's; in rollback mode SQLite refuses to write to a file renamed over
//! (`SQLITE_READONLY_DBMOVED`), and [`SqliteViewStore::open`] then opens the new file.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use crate::sqlite::{SqliteViewStore, busy, remove_database_files, remove_side_files};
use crate::store::ViewError;

/// The old read model, claimed for a rebuild into a new file beside it.
pub struct Replacement {
    /// Holds the old file's lock until the new file is in place (or the rebuild is given up).
    claim: Option<Connection>,
    target: PathBuf,
    scratch: PathBuf,
    /// The old read model's saved stats, as stored.
    stats: Option<String>,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> ViewError {
    ViewError::backend(false, format!("{what} {}: {e}", path.display()))
}

impl Replacement {
    /// Claims the read model at `target` (made if missing) for a rebuild that replaces it;
    /// `None` when another connection has it open, such as a running `jobledger dev`.
    pub fn claim(target: &Path) -> Result<Option<Replacement>, ViewError> {
        let conn = Connection::open(target).map_err(|e| failed("opening", target, e))?;
        conn.busy_timeout(std::time::Duration::ZERO)
            .map_err(|e| failed("opening", target, e))?;
        // SQLite leaves WAL mode only when no other connection has the file open.
        let mode = match conn.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        }) {
            Ok(mode) => mode,
            Err(e) if busy(&e) => return Ok(None),
            Err(e) => return Err(failed("claiming", target, e)),
        };
        if !mode.eq_ignore_ascii_case("delete") {
            return Ok(None);
        }
        // Exclusive locking keeps the lock after the transaction; a journal in memory leaves no
        // file named after the read model behind.
        match conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = MEMORY; \
             BEGIN EXCLUSIVE; COMMIT;",
        ) {
            Ok(()) => {}
            // Another connection opened it since the line above.
            Err(e) if busy(&e) => return Ok(None),
            Err(e) => return Err(failed("claiming", target, e)),
        }
        let stats =
            saved_stats(&conn).map_err(|e| failed("reading the saved stats of", target, e))?;
        let mut scratch = target.as_os_str().to_owned();
        scratch.push(".rebuilding");
        Ok(Some(Replacement {
            claim: Some(conn),
            target: target.to_path_buf(),
            scratch: PathBuf::from(scratch),
            stats,
        }))
    }

    /// The new, empty read model to rebuild into (replacing what a rebuild stopped before its
    /// end left there), with the old one's saved stats.
    pub fn new_store(&self) -> Result<SqliteViewStore, ViewError> {
        SqliteViewStore::open_scratch(&self.scratch, self.stats.as_deref())
    }

    /// Puts the new read model in place: closes `store` (which must be its last clone), syncs
    /// its file, renames it over the old one and lets go of the claim.
    pub fn replace(mut self, store: SqliteViewStore) -> Result<(), ViewError> {
        let path = store.close()?;
        if path != self.scratch {
            return Err(failed(
                "replacing the read model with",
                &path,
                "not this replacement's store",
            ));
        }
        sync(&self.scratch).map_err(|e| failed("syncing", &self.scratch, e))?;
        // A journal or WAL of the old file would be read as the new one's.
        remove_side_files(&self.target)?;
        std::fs::rename(&self.scratch, &self.target)
            .map_err(|e| failed("renaming the rebuilt read model to", &self.target, e))?;
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync(dir).map_err(|e| failed("syncing", dir, e))?;
        }
        self.claim = None;
        Ok(())
    }
}

impl Drop for Replacement {
    /// A replacement given up removes its new file before letting go of the old one, which is
    /// left as it was.
    fn drop(&mut self) {
        if self.claim.is_some() {
            // Best effort: the next rebuild removes what is left, and says so if it cannot.
            let _ = remove_database_files(&self.scratch);
        }
    }
}

/// The saved stats' text; none in a file just made, which has no tables yet.
fn saved_stats(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stats')",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    conn.query_row("SELECT stats FROM stats WHERE id = 1", [], |r| r.get(0))
        .optional()
}

fn sync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, Instant};

    use jobledger_events::JobId;

    use super::*;
    use crate::job_view::JobView;
    use crate::stats::Stats;
    use crate::store::ViewStore;

    fn view() -> JobView {
        let mut view = crate::fixture_view();
        view.job_id = JobId::new();
        view
    }

    /// A read model at `path` holding `view` and saved stats, closed again.
    async fn old_read_model(path: &Path, view: &JobView) -> Stats {
        let store = SqliteViewStore::open(path).unwrap();
        store.upsert(view).await.unwrap();
        let stats = Stats::from_views(std::slice::from_ref(view), Default::default());
        store.save_stats(&stats).await.unwrap();
        stats
    }

    /// Claims `path`, waiting for connections of a store just dropped (its checkpoint thread
    /// closes its own a moment later).
    fn claim_when_closed(path: &Path) -> Replacement {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(claimed) = Replacement::claim(path).unwrap() {
                return claimed;
            }
            assert!(
                Instant::now() < deadline,
                "{} stayed in use",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exists(path: &Path) -> bool {
        std::fs::exists(path).unwrap()
    }

    #[tokio::test]
    async fn a_claimed_read_model_is_replaced_whole_with_its_saved_stats_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let (old, new) = (view(), view());
        let stats = old_read_model(&target, &old).await;

        let claimed = claim_when_closed(&target);
        let store = claimed.new_store().unwrap();
        assert_eq!(store.load_stats().await.unwrap(), Some(stats.clone()));
        assert_eq!(store.all().await.unwrap(), Vec::new());
        store.start_bulk_write().await.unwrap();
        store.upsert_many(std::slice::from_ref(&new)).await.unwrap();
        store.finish_bulk_write().await.unwrap();
        claimed.replace(store).unwrap();

        let reopened = SqliteViewStore::open(&target).unwrap();
        assert_eq!(reopened.all().await.unwrap(), vec![new]);
        assert_eq!(reopened.load_stats().await.unwrap(), Some(stats));
        assert_eq!(crate::listing_indexes(&target), crate::ALL_LISTING_INDEXES);
        let mode: String = Connection::open(&target)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("rebuilding"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn a_read_model_open_in_another_connection_is_not_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let live = SqliteViewStore::open(&target).unwrap();
        live.upsert(&view()).await.unwrap();
        assert!(Replacement::claim(&target).unwrap().is_none());
        // Turned away without harm: the open store still writes.
        live.upsert(&view()).await.unwrap();
        assert_eq!(live.all().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn while_claimed_others_are_kept_out_and_an_open_that_waited_gets_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let (old, new) = (view(), view());
        old_read_model(&target, &old).await;
        let claimed = claim_when_closed(&target);

        let other = Connection::open(&target).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let refused = other
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(busy(&refused), "{refused}");
        drop(other);

        // Opens the old file and waits for its lock; it gets it once the new file is in place.
        let waiting = {
            let target = target.clone();
            std::thread::spawn(move || SqliteViewStore::open(target))
        };
        std::thread::sleep(Duration::from_millis(300));
        let store = claimed.new_store().unwrap();
        store.upsert_many(std::slice::from_ref(&new)).await.unwrap();
        store.finish_bulk_write().await.unwrap();
        claimed.replace(store).unwrap();

        let opened = waiting.join().unwrap().unwrap();
        assert_eq!(opened.all().await.unwrap(), vec![new.clone()]);
        let newer = view();
        opened.upsert(&newer).await.unwrap();
        drop(opened);
        let reopened = SqliteViewStore::open(&target).unwrap();
        assert_eq!(reopened.get(newer.job_id).await.unwrap(), Some(newer));
        assert_eq!(reopened.get(old.job_id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_replacement_given_up_leaves_the_old_read_model_and_no_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let old = view();
        let stats = old_read_model(&target, &old).await;

        let claimed = claim_when_closed(&target);
        let store = claimed.new_store().unwrap();
        store.upsert(&view()).await.unwrap();
        let scratch = claimed.scratch.clone();
        assert!(exists(&scratch));
        // A clone still in use: refused, and nothing replaced.
        let clone = store.clone();
        let refused = claimed.replace(store).unwrap_err();
        assert!(refused.to_string().contains("still in use"), "{refused}");
        drop(clone);
        assert!(!exists(&scratch));

        let reopened = SqliteViewStore::open(&target).unwrap();
        assert_eq!(reopened.all().await.unwrap(), vec![old]);
        assert_eq!(reopened.load_stats().await.unwrap(), Some(stats));
        assert_eq!(crate::listing_indexes(&target), crate::ALL_LISTING_INDEXES);
    }

    #[tokio::test]
    async fn a_leftover_that_cannot_be_removed_is_named_and_the_old_read_model_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let old = view();
        old_read_model(&target, &old).await;
        std::fs::create_dir(dir.path().join("views.sqlite3.rebuilding")).unwrap();

        let claimed = claim_when_closed(&target);
        let Err(refused) = claimed.new_store() else {
            panic!("a leftover that cannot be removed was opened over");
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("removing") && refused.contains("views.sqlite3.rebuilding"),
            "{refused}"
        );
        drop(claimed);
        let reopened = SqliteViewStore::open(&target).unwrap();
        assert_eq!(reopened.all().await.unwrap(), vec![old]);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        let text = "not a database, some notes of mine\n".repeat(200);
        std::fs::write(&target, &text).unwrap();
        let Err(refused) = Replacement::claim(&target) else {
            panic!("a file that is not a database was claimed");
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("claiming") && refused.contains("views.sqlite3"),
            "{refused}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), text);
        assert!(!exists(&dir.path().join("views.sqlite3.rebuilding")));
    }

    #[tokio::test]
    async fn what_a_stopped_rebuild_left_is_written_over_and_a_missing_read_model_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("views.sqlite3");
        std::fs::write(dir.path().join("views.sqlite3.rebuilding"), b"half a file").unwrap();

        let claimed = Replacement::claim(&target).unwrap().unwrap();
        let store = claimed.new_store().unwrap();
        assert_eq!(store.load_stats().await.unwrap(), None);
        let new = view();
        store.upsert(&new).await.unwrap();
        store.finish_bulk_write().await.unwrap();
        claimed.replace(store).unwrap();
        let reopened = SqliteViewStore::open(&target).unwrap();
        assert_eq!(reopened.all().await.unwrap(), vec![new]);
    }
}
