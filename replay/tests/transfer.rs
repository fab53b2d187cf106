//! `export` and `import` when something goes wrong: nothing half-written is left behind, and a
//! ledger is never overwritten.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use jobledger_events::{EventStore, SqliteEventStore};
use jobledger_replay::format::write_export;
use jobledger_replay::synth::Synth;
use jobledger_replay::transfer::{ImportRefused, export, import};
use jobledger_replay::{FileSource, SqliteSource, verify_source};

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_export_that_fails_leaves_the_old_file_as_it_was_and_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    write_export(&good, &Synth::new(3).jobs(40)).unwrap();
    // A source with an unreadable line two thirds in: export stops there.
    let text = std::fs::read_to_string(&good).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let at = lines.len() * 2 / 3;
    lines[at] = "{\"not\": an event";
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();

    for out in ["out.jsonl", "out.jsonl.zst"] {
        let out = dir.path().join(out);
        std::fs::write(&out, b"an earlier export\n").unwrap();
        let before = names(dir.path());
        let err = export(&FileSource::open(&damaged).unwrap(), None, &out, false)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("unreadable"), "{err:#}");
        assert_eq!(std::fs::read(&out).unwrap(), b"an earlier export\n");
        assert_eq!(names(dir.path()), before, "no partial file is left");

        // From a readable source the same path is replaced whole, compressed or not.
        let s = export(&FileSource::open(&good).unwrap(), None, &out, false)
            .await
            .unwrap();
        assert_eq!(s.jobs, 40);
        assert_eq!(
            jobledger_replay::format::read_all(&out).unwrap(),
            text.as_bytes()
        );
        assert_eq!(names(dir.path()), before);
    }
}

#[tokio::test]
async fn export_refuses_to_write_over_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    write_export(&file, &Synth::new(4).jobs(5)).unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    import(&file, &ledger, false, false).await.unwrap();
    let before = std::fs::read(&ledger).unwrap();
    let src = SqliteSource::open(&ledger).unwrap();
    let err = export(&src, None, &ledger, false).await.unwrap_err();
    assert!(err.to_string().contains("is a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&ledger).unwrap(), before);
    assert!(verify_source(&src, None, false).await.unwrap().ok());
}

#[tokio::test]
async fn import_refuses_a_ledger_with_events_before_reading_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    write_export(&file, &Synth::new(5).jobs(5)).unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    import(&file, &ledger, false, false).await.unwrap();
    let before = std::fs::read(&ledger).unwrap();
    // The file is not even opened: a garbage one and a missing one get the same refusal.
    std::fs::write(dir.path().join("other.jsonl"), "garbage\n").unwrap();
    for file in ["other.jsonl", "missing.jsonl"] {
        let err = import(&dir.path().join(file), &ledger, false, false)
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(ImportRefused::NotEmpty(_))),
            "{file}: {err:#}"
        );
    }
    assert_eq!(std::fs::read(&ledger).unwrap(), before);

    // Something that is not a ledger is named, not overwritten.
    let not_a_ledger = dir.path().join("notes.sqlite3");
    std::fs::write(&not_a_ledger, "notes\n").unwrap();
    let err = import(&file, &not_a_ledger, false, false)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("notes.sqlite3"), "{err:#}");
    assert_eq!(std::fs::read(&not_a_ledger).unwrap(), b"notes\n");
}

#[tokio::test]
async fn an_import_that_fails_half_way_leaves_no_ledger_and_can_be_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Synth::new(6).jobs(30);
    let good = dir.path().join("good.jsonl");
    write_export(&good, &jobs).unwrap();
    // Job 0 again at the end: its events conflict with the ones already appended. Verification
    // catches it; forced past verification, the append fails after most jobs are in.
    let text = std::fs::read_to_string(&good).unwrap();
    let first_job: Vec<&str> = text.lines().take(jobs[0].len() + 1).collect();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{text}{}\n", first_job.join("\n"))).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ledger = data.join("ledger.sqlite3");

    let err = import(&bad, &ledger, false, false).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(ImportRefused::NotVerified(_))),
        "{err:#}"
    );
    let err = import(&bad, &ledger, true, false).await.unwrap_err();
    assert!(
        !matches!(err.downcast_ref(), Some(ImportRefused::NotVerified(_))),
        "{err:#}"
    );
    assert!(names(&data).is_empty(), "{:?}", names(&data));

    let s = import(&good, &ledger, false, false).await.unwrap();
    assert_eq!(s.jobs, 30);
    assert_eq!(names(&data), ["ledger.sqlite3"]);
    let src = SqliteSource::open(&ledger).unwrap();
    assert!(verify_source(&src, None, false).await.unwrap().ok());
}

#[tokio::test]
async fn an_empty_ledger_is_replaced_only_when_nobody_has_it_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    write_export(&file, &Synth::new(7).jobs(8)).unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    // An empty ledger, as a first `jobledger dev` leaves it, still open.
    let open = SqliteEventStore::open(&ledger).unwrap();
    assert!(
        open.load(Synth::new(8).jobs(1)[0][0].job_id)
            .await
            .unwrap()
            .is_empty()
    );
    let err = import(&file, &ledger, false, false).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(ImportRefused::InUse(_))),
        "{err:#}"
    );
    assert!(
        names(dir.path()).iter().all(|n| !n.contains("importing")),
        "{:?}",
        names(dir.path())
    );
    drop(open);
    // The store's threads close their connections on their own time.
    let mut tries = 0;
    let s = loop {
        match import(&file, &ledger, false, false).await {
            Ok(s) => break s,
            Err(e) if tries < 50 && matches!(e.downcast_ref(), Some(ImportRefused::InUse(_))) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    assert_eq!(s.jobs, 8);
    let src = SqliteSource::open(&ledger).unwrap();
    assert!(verify_source(&src, None, false).await.unwrap().ok());
}
