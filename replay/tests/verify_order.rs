//! `verify --all` of export files in any job order: files in job id order (every export) are
//! checked keeping two ids, others are read again keeping every job; a repeated job is caught
//! either way.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use jobledger_events::RecordedEvent;
use jobledger_replay::format::{Entry, Pin, Pos, sourced, write_export};
use jobledger_replay::synth::Synth;
use jobledger_replay::verify::rules;
use jobledger_replay::{FileSource, Verifier, VerifyReport, verify_source};

/// Each job's lines (its events, then its pin) of a generated export, in job id order.
fn job_groups(dir: &Path, jobs: usize) -> Vec<Vec<String>> {
    let mut synth = Synth::new(17);
    let mut histories = synth.jobs(jobs);
    histories.sort_by_key(|h| h[0].job_id);
    let file = dir.join("sorted.jsonl");
    write_export(&file, &histories).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines = text.lines().map(str::to_string);
    histories
        .iter()
        .map(|h| lines.by_ref().take(h.len() + 1).collect())
        .collect()
}

async fn verify_groups(dir: &Path, groups: &[Vec<String>]) -> VerifyReport {
    let file = dir.join("file.jsonl");
    std::fs::write(&file, groups.concat().join("\n") + "\n").unwrap();
    verify_source(&FileSource::open(&file).unwrap(), None, false)
        .await
        .unwrap()
}

fn job_of(group: &[String]) -> String {
    let v: serde_json::Value = serde_json::from_str(&group[0]).unwrap();
    v["job_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn jobs_in_any_order_verify_clean_and_a_job_repeated_anywhere_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    // Several 256 KiB runs, so the reader threads split the file between them.
    let sorted = job_groups(dir.path(), 600);
    let report = verify_groups(dir.path(), &sorted).await;
    assert!(report.ok(), "{:#?}", report.findings);
    assert_eq!(report.jobs, 600);

    // Other orders are legal: reversed, or one job moved to the end.
    let mut reversed = sorted.clone();
    reversed.reverse();
    let mut moved = sorted.clone();
    let tenth = moved.remove(10);
    moved.push(tenth);
    for (name, groups) in [("reversed", &reversed), ("moved", &moved)] {
        let report = verify_groups(dir.path(), groups).await;
        assert!(report.ok(), "{name}: {:#?}", report.findings);
        assert_eq!(report.jobs, 600, "{name}");
    }

    // A whole job again, pin and all: right after itself, at the far end (another part of the
    // split scan), or in a file that is out of order anyway.
    let mut twice = sorted.clone();
    twice.insert(301, sorted[300].clone());
    let mut at_the_end = sorted.clone();
    at_the_end.push(sorted[0].clone());
    let mut reversed_twice = reversed.clone();
    reversed_twice.insert(5, reversed[400].clone());
    for (name, groups, job) in [
        ("twice", &twice, job_of(&sorted[300])),
        ("at the end", &at_the_end, job_of(&sorted[0])),
        ("reversed, twice", &reversed_twice, job_of(&reversed[400])),
    ] {
        let report = verify_groups(dir.path(), groups).await;
        assert!(!report.ok(), "{name}");
        assert!(
            report
                .findings
                .iter()
                .all(|f| f.rule == rules::CONTIGUOUS && f.job_id.unwrap().to_string() == job),
            "{name}: {:#?}",
            report.findings
        );
    }
}

/// Feeds `jobs` to `v` as consecutive lines of a file from line `first_line` on.
fn feed(v: &mut Verifier, jobs: &[Vec<RecordedEvent>], first_line: u64) {
    let mut line = first_line;
    for history in jobs {
        for e in history {
            v.entry(Entry::Event(sourced(e.clone(), Pos::Line(line), true)));
            line += 1;
        }
        v.entry(Entry::Pin(Pin::of(history).unwrap(), Pos::Line(line)));
        line += 1;
    }
}

#[test]
fn parts_in_job_id_order_merge_and_a_run_out_of_order_asks_for_a_second_pass() {
    let mut synth = Synth::new(23);
    let mut jobs = synth.jobs(6);
    jobs.sort_by_key(|h| h[0].job_id);
    let lines = |n: usize| jobs[..n].iter().map(|h| h.len() as u64 + 1).sum::<u64>();
    let ordered = || {
        Verifier::new(true, true)
            .check_results(false)
            .expecting_job_id_order()
    };

    // Two reader threads took runs in turn: A lines of jobs 0-1 and 4-5, B jobs 2-3.
    let (mut a, mut b) = (ordered(), ordered());
    feed(&mut a, &jobs[0..2], 1);
    feed(&mut b, &jobs[2..4], 1 + lines(2));
    feed(&mut a, &jobs[4..6], 1 + lines(4));
    let report = Verifier::finish_ordered_parts(vec![a, b]).expect("in order");
    assert!(report.ok(), "{:#?}", report.findings);
    assert_eq!(report.jobs, 6);

    // B's run repeats job 1 where job 2 belongs: each part alone is in order, the file is not.
    let (mut a, mut b) = (ordered(), ordered());
    feed(&mut a, &jobs[0..2], 1);
    let b_run = [jobs[1].clone(), jobs[3].clone()];
    feed(&mut b, &b_run, 1 + lines(2));
    feed(&mut a, &jobs[4..6], 1 + lines(4));
    assert!(Verifier::finish_ordered_parts(vec![a, b]).is_none());

    // The same runs verified keeping every job name the repeat.
    let (mut a, mut b) = (
        Verifier::new(true, true).check_results(false),
        Verifier::new(true, true).check_results(false),
    );
    feed(&mut a, &jobs[0..2], 1);
    feed(&mut b, &b_run, 1 + lines(2));
    feed(&mut a, &jobs[4..6], 1 + lines(4));
    let report = Verifier::finish_parts(vec![a, b]);
    assert_eq!(report.total_findings, 1, "{:#?}", report.findings);
    assert_eq!(report.findings[0].rule, rules::CONTIGUOUS);
    assert_eq!(report.findings[0].job_id, Some(jobs[1][0].job_id));
}
