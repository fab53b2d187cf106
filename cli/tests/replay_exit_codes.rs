//! `jobledger replay` as a script sees it: 0 clean, 1 findings, 2 the command could not run.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use jobledger_replay::format::write_export;
use jobledger_replay::synth::Synth;

/// Runs `jobledger replay --data-dir DIR ARGS`; returns the exit code and stderr.
fn replay(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jobledger"))
        .args(["replay", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replay_exits_0_when_clean_1_on_findings_and_2_when_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("export.jsonl");
    write_export(&file, &Synth::new(3).jobs(6)).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();

    assert_eq!(replay(&data, &["import", &path(&file)]).0, 0);
    assert_eq!(replay(&data, &["verify", "--all"]).0, 0);

    // One byte of one event changed: a finding, exit 1.
    let text = std::fs::read_to_string(&file).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, text.replacen("\"actor\":\"", "\"actor\":\"X", 1)).unwrap();
    let (code, _) = replay(&data, &["--from", &path(&bad), "verify", "--all"]);
    assert_eq!(code, 1);

    // Cannot run: no ledger there, an export over the ledger, an import into a full one.
    let (code, err) = replay(&dir.path().join("nowhere"), &["verify", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    let ledger = data.join("ledger.sqlite3");
    let (code, err) = replay(&data, &["export", "--all", "--out", &path(&ledger)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SQLite database"), "{err}");
    let (code, err) = replay(&data, &["import", &path(&file)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(replay(&data, &["verify", "--all"]).0, 0);
}
