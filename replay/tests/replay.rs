//! End-to-end checks of the replay commands on generated ledgers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use jobledger_events::chain::compute_hash;
use jobledger_events::{ChangeFeed, Hash, RecordedEvent, SqliteEventStore};
use jobledger_projections::{JobView, SqliteViewStore, Stats, ViewStore};
use jobledger_replay::format::{read_all, write_export};
use jobledger_replay::synth::{Rng, Synth};
use jobledger_replay::verify::rules;
use jobledger_replay::views::{Projection, rebuild};
use jobledger_replay::{
    AnySource, FileSource, ReplayCommand, SourceArgs, SqliteSource, VerifyReport, run,
    verify_source,
};

fn generate(jobs: usize, seed: u64, results: Option<&Path>) -> Vec<Vec<RecordedEvent>> {
    let mut synth = Synth::new(seed);
    synth.results_dir = results.map(Path::to_path_buf);
    synth.jobs(jobs)
}

fn write_file(path: &Path, jobs: &[Vec<RecordedEvent>]) {
    write_export(path, jobs).unwrap();
}

async fn verify_file(path: &Path) -> VerifyReport {
    verify_source(&FileSource::open(path).unwrap(), None, false)
        .await
        .unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    String::from_utf8(read_all(path).unwrap())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn data_dir(dir: &Path) -> SourceArgs {
    SourceArgs {
        data_dir: dir.to_path_buf(),
        from: None,
        dynamodb_table: None,
        dynamodb_segments: 4,
    }
}

#[tokio::test]
async fn a_generated_ledger_verifies_clean_with_its_result_files() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("objects");
    std::fs::create_dir_all(&results).unwrap();
    let jobs = generate(200, 1, Some(&results));
    let file = dir.path().join("ledger.jsonl");
    write_file(&file, &jobs);
    let report = verify_file(&file).await;
    assert!(
        report.ok(),
        "{:#?}",
        &report.findings[..report.findings.len().min(5)]
    );
    assert_eq!(
        report.events,
        jobs.iter().map(|j| j.len() as u64).sum::<u64>()
    );
    assert!(report.results_checked > 100, "{report:?}");

    // A result file changed after the fact is caught by its checksum.
    let victim = std::fs::read_dir(&results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, b"tampered\n").unwrap();
    let report = verify_file(&file).await;
    assert_eq!(report.total_findings, 1, "{:#?}", report.findings);
    assert_eq!(report.findings[0].rule, rules::RESULT);
}

/// Index of the line holding `job`'s `version` in an export (jobs written in order, pins after each).
fn line_of(jobs: &[Vec<RecordedEvent>], job: usize, version: u64) -> usize {
    jobs[..job].iter().map(|j| j.len() + 1).sum::<usize>() + version as usize - 1
}

fn rehash(line: &str, edit: impl FnOnce(&mut RecordedEvent)) -> String {
    let mut e: RecordedEvent = serde_json::from_str(line).unwrap();
    edit(&mut e);
    e.hash = compute_hash(&e);
    serde_json::to_string(&e).unwrap()
}

#[tokio::test]
async fn each_kind_of_tampering_in_an_export_is_caught_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(20, 2, None);
    let file = dir.path().join("a.jsonl");
    write_file(&file, &jobs);
    let clean = lines(&file);
    let job_id = jobs[5][0].job_id;
    let len = jobs[5].len() as u64;
    assert!(len >= 6);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "payload edited",
            {
                let mut l = clean.clone();
                let i = line_of(&jobs, 5, 3);
                l[i] = l[i].replacen("\"attempt\":1", "\"attempt\":2", 1);
                l
            },
            rules::HASH,
        ),
        (
            "payload edited and rehashed",
            {
                let mut l = clean.clone();
                let i = line_of(&jobs, 5, 3);
                l[i] = rehash(&l[i], |e| e.actor = "api-key:mallory".into());
                l
            },
            rules::LINK,
        ),
        (
            "middle event deleted",
            {
                let mut l = clean.clone();
                l.remove(line_of(&jobs, 5, 3));
                l
            },
            rules::VERSIONS,
        ),
        (
            "last event deleted",
            {
                let mut l = clean.clone();
                l.remove(line_of(&jobs, 5, len));
                l
            },
            rules::PIN,
        ),
        (
            "pair reordered",
            {
                let mut l = clean.clone();
                l.swap(line_of(&jobs, 5, 3), line_of(&jobs, 5, 4));
                l
            },
            rules::VERSIONS,
        ),
        (
            "event inserted",
            {
                let mut l = clean.clone();
                let i = line_of(&jobs, 5, 3);
                let copy = l[i].clone();
                l.insert(i + 1, copy);
                l
            },
            rules::VERSIONS,
        ),
        (
            "a legal-looking but impossible event, fully re-chained",
            {
                // Re-chain the whole job after turning AttemptStarted's attempt into 2: only the
                // replayed state machine can tell.
                let mut l = clean.clone();
                let mut prev = Hash::ZERO;
                for v in 1..=len {
                    let i = line_of(&jobs, 5, v);
                    l[i] = rehash(&l[i], |e| {
                        if e.event_type == "AttemptStarted" {
                            e.data = serde_json::value::RawValue::from_string(
                                e.data.get().replacen("\"attempt\":1", "\"attempt\":2", 1),
                            )
                            .unwrap();
                        }
                        e.prev_hash = prev;
                    });
                    prev = serde_json::from_str::<RecordedEvent>(&l[i]).unwrap().hash;
                }
                let pin = line_of(&jobs, 5, len) + 1;
                l[pin] = format!(
                    "{{\"pin\":{{\"job_id\":\"{job_id}\",\"version\":{len},\"hash\":\"{prev}\"}}}}"
                );
                l
            },
            rules::ATTEMPTS,
        ),
    ];
    for (name, tampered, rule) in cases {
        let path = dir.path().join("t.jsonl");
        write_lines(&path, &tampered);
        let report = verify_file(&path).await;
        assert!(!report.ok(), "{name}: not detected");
        assert!(
            report.has_rule(rule),
            "{name}: expected {rule}, got {:#?}",
            report.findings
        );
        assert!(
            report
                .findings
                .iter()
                .all(|f| f.job_id == Some(job_id) && f.version.is_some()),
            "{name}: findings must name the job and version: {:#?}",
            report.findings
        );
    }
}

#[tokio::test]
async fn a_thousand_random_single_byte_flips_are_all_detected() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(1250, 3, None);
    let total: usize = jobs.iter().map(Vec::len).sum();
    assert!(total >= 10_000, "{total} events");
    let file = dir.path().join("clean.jsonl");
    write_file(&file, &jobs);
    let clean = std::fs::read(&file).unwrap();
    // Byte range of each job's lines (events and pin), and the line number where it starts.
    let mut spans = Vec::new();
    let (mut start, mut line) = (0usize, 1u64);
    // (first byte, end byte, first line) of each job's lines
    for j in &jobs {
        let n = j.len() + 1;
        let mut end = start;
        for _ in 0..n {
            end += clean[end..].iter().position(|&b| b == b'\n').unwrap() + 1;
        }
        spans.push((start, end, line));
        start = end;
        line += n as u64;
    }
    let mut rng = Rng::new(42);
    let mut flips = 0;
    for round in 0..10 {
        // 100 flips per round, each in its own job (every tenth job, shifted per round), so each
        // one's findings can be told apart by line.
        let mut bytes = clean.clone();
        let mut expected = Vec::new();
        for k in 0..100 {
            let (s, e, _) = spans[k * 12 + round];
            let at = s + rng.below((e - s) as u64) as usize;
            bytes[at] ^= 1 + rng.below(255) as u8;
            expected.push(at);
            flips += 1;
        }
        // Line numbers as the verifier sees the damaged file (an earlier flip may add or remove a newline).
        let newlines: Vec<usize> = memchr_all(&bytes);
        let expected: Vec<(u64, usize, u8)> = expected
            .into_iter()
            .map(|at| {
                (
                    1 + newlines.partition_point(|&n| n < at) as u64,
                    at,
                    bytes[at],
                )
            })
            .collect();
        let path = dir.path().join(format!("flipped-{round}.jsonl"));
        std::fs::write(&path, &bytes).unwrap();
        let report = verify_file(&path).await;
        let lines_found: BTreeSet<u64> = report
            .findings
            .iter()
            .filter_map(|f| match f.pos {
                jobledger_replay::format::Pos::Line(n) => Some(n),
                _ => None,
            })
            .collect();
        for (line, at, byte) in expected {
            if !lines_found.contains(&line) {
                let text = String::from_utf8_lossy(&bytes);
                eprintln!(
                    "line: {}",
                    text.lines().nth(line as usize - 1).unwrap_or("")
                );
                eprintln!("findings: {:#?}", report.findings.iter().filter(|f| f.job_id.is_none() || matches!(f.pos, jobledger_replay::format::Pos::Line(n) if n + 20 > line && n < line + 20)).collect::<Vec<_>>());
            }
            assert!(
                lines_found.contains(&line),
                "round {round}: flip at byte {at} (line {line}, now {byte:#04x}) not reported"
            );
        }
    }
    assert_eq!(flips, 1000);
}

async fn import_file(file: &Path, dir: &Path, force: bool) {
    jobledger_replay::transfer::import(file, &dir.join("ledger.sqlite3"), force, false)
        .await
        .unwrap();
}

async fn verify_ledger(dir: &Path) -> VerifyReport {
    let src = SqliteSource::open(&dir.join("ledger.sqlite3")).unwrap();
    verify_source(&src, None, false).await.unwrap()
}

#[tokio::test]
async fn export_and_import_round_trip_byte_for_byte_and_verify_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(150, 4, None);
    let original = dir.path().join("original.jsonl");
    write_file(&original, &jobs);
    assert!(verify_file(&original).await.ok());

    let first = dir.path().join("first");
    import_file(&original, &first, false).await;
    assert!(verify_ledger(&first).await.ok());
    let exported = dir.path().join("exported.jsonl.zst");
    let code = run(
        ReplayCommand::Export {
            job: None,
            all: true,
            out: exported.clone(),
        },
        data_dir(&first),
    )
    .await
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        read_all(&exported).unwrap(),
        std::fs::read(&original).unwrap()
    );

    let second = dir.path().join("second");
    import_file(&exported, &second, false).await;
    assert!(verify_ledger(&second).await.ok());
    let again = dir.path().join("again.jsonl");
    jobledger_replay::transfer::export(
        &SqliteSource::open(&second.join("ledger.sqlite3")).unwrap(),
        None,
        &again,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&original).unwrap()
    );

    // One job alone, from a file source, is that job's lines and pin.
    let one = dir.path().join("one.jsonl");
    let source = SourceArgs {
        data_dir: dir.path().to_path_buf(),
        from: Some(original.clone()),
        dynamodb_table: None,
        dynamodb_segments: 4,
    };
    let cmd = ReplayCommand::Export {
        job: Some(jobs[7][0].job_id),
        all: false,
        out: one.clone(),
    };
    assert_eq!(run(cmd, source).await.unwrap(), ExitCode::SUCCESS);
    assert_eq!(
        lines(&one),
        lines(&original)[line_of(&jobs, 7, 1)..line_of(&jobs, 8, 1)].to_vec()
    );

    // Import refuses a store that already holds events.
    assert!(
        jobledger_replay::transfer::import(&original, &first.join("ledger.sqlite3"), false, false)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tampering_inside_the_sqlite_ledger_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(30, 5, None);
    let file = dir.path().join("a.jsonl");
    write_file(&file, &jobs);
    let clean = lines(&file);
    let job = 4;
    let job_id = jobs[job][0].job_id;
    let renumber = |line: &str, v: u64| {
        let mut e: RecordedEvent = serde_json::from_str(line).unwrap();
        e.version = v;
        serde_json::to_string(&e).unwrap()
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "payload edited",
            {
                let mut l = clean.clone();
                let i = line_of(&jobs, job, 2);
                l[i] = l[i].replacen("msg-", "msX-", 1);
                l
            },
            rules::HASH,
        ),
        (
            "middle event deleted (later versions renumbered to close the gap)",
            {
                let mut l = clean.clone();
                let len = jobs[job].len() as u64;
                l.remove(line_of(&jobs, job, 3));
                for v in 4..=len {
                    let i = line_of(&jobs, job, v) - 1;
                    l[i] = renumber(&l[i], v - 1);
                }
                l
            },
            rules::LINK,
        ),
        (
            "pair reordered (contents swapped, versions kept)",
            {
                let mut l = clean.clone();
                let (a, b) = (line_of(&jobs, job, 3), line_of(&jobs, job, 4));
                let (la, lb) = (renumber(&l[b], 3), renumber(&l[a], 4));
                l[a] = la;
                l[b] = lb;
                l
            },
            rules::HASH,
        ),
        (
            "event inserted (later versions renumbered)",
            {
                let mut l = clean.clone();
                let len = jobs[job].len() as u64;
                for v in (3..=len).rev() {
                    let i = line_of(&jobs, job, v);
                    l[i] = renumber(&l[i], v + 1);
                }
                let i = line_of(&jobs, job, 3);
                let forged = renumber(&l[i], 3);
                l.insert(i, forged);
                l
            },
            rules::LINK,
        ),
    ];
    for (n, (name, tampered, rule)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("t{n}.jsonl"));
        write_lines(&path, &tampered);
        let store_dir = dir.path().join(format!("store{n}"));
        import_file(&path, &store_dir, true).await;
        let all = verify_ledger(&store_dir).await;
        assert!(
            all.has_rule(rule),
            "{name}: expected {rule}, got {:#?}",
            all.findings
        );
        assert!(
            all.findings.iter().all(|f| f.job_id == Some(job_id)),
            "{name}: {:#?}",
            all.findings
        );
        let src = SqliteSource::open(&store_dir.join("ledger.sqlite3")).unwrap();
        let one = verify_source(&src, Some(job_id), false).await.unwrap();
        assert!(!one.ok(), "{name}: verify JOB missed it");
        let other = verify_source(&src, Some(jobs[job + 1][0].job_id), false)
            .await
            .unwrap();
        assert!(
            other.ok(),
            "{name}: an untouched job was flagged: {:#?}",
            other.findings
        );
    }
}

/// The live projector's way: every event from the feed, folded into the stored view one at a time.
async fn project_incrementally(store: &SqliteEventStore, views: &SqliteViewStore) {
    let mut seq = 0;
    loop {
        let page = store.read_after(seq, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        seq = last.seq;
        for f in page {
            let before = views.get(f.event.job_id).await.unwrap();
            if let Some(view) = JobView::apply(before, &f.event).unwrap() {
                views.upsert(&view).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn rebuild_equals_the_read_model_built_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(40, 6, None);
    let file = dir.path().join("a.jsonl");
    write_file(&file, &jobs);
    import_file(&file, dir.path(), false).await;
    let store = SqliteEventStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let views = SqliteViewStore::open(dir.path().join("views.sqlite3")).unwrap();
    project_incrementally(&store, &views).await;
    let live = views.all().await.unwrap();
    assert_eq!(live.len(), 40);
    views
        .save_stats(&Stats::from_views(&live, Default::default()))
        .await
        .unwrap();

    let src = SqliteSource::open(&dir.path().join("ledger.sqlite3")).unwrap();
    let dry = rebuild(&src, &views, Projection::All, true, false)
        .await
        .unwrap();
    assert_eq!(dry.diff_count, 0, "{:#?}", dry.diffs);
    assert!(dry.stats_diff.is_empty(), "{:#?}", dry.stats_diff);

    // Damage the read model: the dry run names exactly what differs.
    let mut wrong = live[3].clone();
    wrong.cost_usd += 1.0;
    wrong.last_version += 1;
    views.upsert(&wrong).await.unwrap();
    let dry = rebuild(&src, &views, Projection::Jobs, true, false)
        .await
        .unwrap();
    assert_eq!(dry.diff_count, 1);
    assert_eq!(dry.diffs[0].job_id, live[3].job_id);
    assert_eq!(
        dry.diffs[0].fields.keys().cloned().collect::<Vec<_>>(),
        ["cost_usd", "last_version"]
    );

    let report = rebuild(&src, &views, Projection::All, false, false)
        .await
        .unwrap();
    assert_eq!(report.written, 40);
    assert_eq!(views.all().await.unwrap(), live);
    let from_file = rebuild(
        &FileSource::open(&file).unwrap(),
        &views,
        Projection::All,
        true,
        false,
    )
    .await
    .unwrap();
    assert_eq!(from_file.diff_count, 0);

    // A view missing, one of a job the ledger lacks, one changed: both kinds of dry run (the
    // ordered merge of the store, the look-ups of the file) name each once.
    let conn = rusqlite::Connection::open(dir.path().join("views.sqlite3")).unwrap();
    conn.execute(
        "DELETE FROM jobs WHERE job_id = ?1",
        [live[5].job_id.to_string()],
    )
    .unwrap();
    let mut extra = live[6].clone();
    extra.job_id = jobledger_events::JobId::new();
    views.upsert(&extra).await.unwrap();
    let mut changed = live[7].clone();
    changed.error = Some("edited".into());
    changed.last_version += 1;
    views.upsert(&changed).await.unwrap();
    let mut want = vec![
        (live[5].job_id, "missing"),
        (extra.job_id, "extra"),
        (live[7].job_id, "differs"),
    ];
    want.sort();
    for (name, src) in [
        ("ledger", AnySource::Sqlite(src.clone())),
        ("export", AnySource::File(FileSource::open(&file).unwrap())),
    ] {
        let dry = rebuild(&src, &views, Projection::Jobs, true, false)
            .await
            .unwrap();
        let mut got: Vec<_> = dry.diffs.iter().map(|d| (d.job_id, d.change)).collect();
        got.sort();
        assert_eq!(got, want, "{name}");
        assert_eq!(dry.diff_count, 3, "{name}");
    }
}

#[tokio::test]
async fn an_old_schema_event_is_read_through_the_upcaster_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = generate(3, 7, None);
    // Rewrite job 0's ProgressReported events as schema 1 (no `failed`), re-chained.
    let mut prev = Hash::ZERO;
    for e in &mut jobs[0] {
        if e.event_type == "ProgressReported" {
            let mut v: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
            v.as_object_mut().unwrap().remove("failed");
            e.data = serde_json::value::RawValue::from_string(
                jobledger_events::chain::canonical_json(&v),
            )
            .unwrap();
            e.schema = 1;
        }
        e.prev_hash = prev;
        e.hash = compute_hash(e);
        prev = e.hash;
    }
    assert!(jobs[0].iter().any(|e| e.schema == 1));
    let file = dir.path().join("old.jsonl");
    write_file(&file, &jobs);
    assert!(verify_file(&file).await.ok());
    let src = SourceArgs {
        data_dir: dir.path().to_path_buf(),
        from: Some(file.clone()),
        dynamodb_table: None,
        dynamodb_segments: 4,
    };
    let job = jobs[0][0].job_id;
    for cmd in [
        ReplayCommand::History { job, json: true },
        ReplayCommand::State {
            job,
            at_version: Some(6),
            at: None,
        },
        ReplayCommand::Stats {
            since: None,
            until: None,
            json: true,
        },
        ReplayCommand::Verify {
            job: Some(job),
            all: false,
            json: false,
        },
    ] {
        assert_eq!(
            run(cmd.clone(), src.clone()).await.unwrap(),
            ExitCode::SUCCESS,
            "{cmd:?}"
        );
    }
}

#[tokio::test]
async fn state_at_a_version_and_a_time_and_the_timeline() {
    let jobs = generate(1, 8, None);
    let events = &jobs[0];
    let job = events[0].job_id;
    let at3 = jobledger_replay::history::state_at(
        job,
        events,
        jobledger_replay::history::Until::Version(3),
    )
    .unwrap();
    assert_eq!(at3.job.version, 3);
    let decoded: Vec<_> = events[..3].iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        at3.job.status,
        jobledger_events::Job::from_events(&decoded).status
    );
    let by_time = jobledger_replay::history::state_at(
        job,
        events,
        jobledger_replay::history::Until::Time(events[2].at),
    )
    .unwrap();
    // Events of one command share their time, so "at that time" may take in more than version 3.
    let upto = events.iter().filter(|e| e.at <= events[2].at).count() as u64;
    assert!(upto >= 3);
    assert_eq!(by_time.job.version, upto);
    assert_eq!(by_time.view.unwrap().last_version, upto);
    let t = jobledger_replay::history::timeline(job, events, vec![]);
    assert_eq!(t.steps.len(), events.len());
    let spent: i64 = t.time_in_status_ms.values().sum();
    assert_eq!(
        spent,
        (events.last().unwrap().at - events[0].at).num_milliseconds()
    );
    let text = jobledger_replay::history::render(&t);
    assert!(
        text.contains("JobSubmitted") && text.contains("SUBMITTED"),
        "{text}"
    );
}

#[tokio::test]
async fn a_row_deleted_from_the_sqlite_ledger_leaves_a_gap_that_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = generate(10, 9, None);
    let file = dir.path().join("a.jsonl");
    write_file(&file, &jobs);
    import_file(&file, dir.path(), false).await;
    let job_id = jobs[2][0].job_id;
    // Straight to the table, as an attacker with the file would (the store's API cannot delete).
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let deleted = conn
        .execute(
            "DELETE FROM events WHERE job_id = ?1 AND version = 3",
            [job_id.0.as_bytes().to_vec()],
        )
        .or_else(|_| {
            conn.execute(
                "DELETE FROM events WHERE job_id = ?1 AND version = 3",
                [job_id.to_string()],
            )
        })
        .unwrap();
    assert_eq!(
        deleted, 1,
        "the ledger's table layout changed: update this test"
    );
    drop(conn);
    let report = verify_ledger(dir.path()).await;
    assert!(report.has_rule(rules::VERSIONS), "{:#?}", report.findings);
    assert!(report.findings.iter().all(|f| f.job_id == Some(job_id)));
    let args = data_dir(dir.path());
    let cmd = ReplayCommand::Verify {
        job: Some(job_id),
        all: false,
        json: false,
    };
    assert_eq!(run(cmd, args).await.unwrap(), ExitCode::from(1));
}

/// Offsets of every newline.
fn memchr_all(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect()
}
