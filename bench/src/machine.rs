//! What the figures were measured on: cores, CPU, kernel, the temp dir's file system, and the
//! SQLite each side links.

use std::path::Path;
use std::process::Command;

/// Description of the machine, one `name: value` pair per entry.
pub fn describe(peers_bin: &Path) -> Vec<(String, String)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let tmp = std::env::temp_dir();
    let fs = command_output(Command::new("stat").args(["-f", "-c", "%T"]).arg(&tmp));
    let peers_sqlite = command_output(Command::new(peers_bin).arg("sqlite-version"));
    vec![
        ("cores".into(), cores.to_string()),
        ("cpu".into(), cpu),
        ("kernel".into(), kernel),
        ("data dir".into(), format!("{} ({fs})", tmp.display())),
        (
            "SQLite, jobledger".into(),
            format!("{} (rusqlite, bundled)", rusqlite::version()),
        ),
        (
            "SQLite, peers".into(),
            format!("{peers_sqlite} (sqlx, bundled)"),
        ),
    ]
}

fn command_output(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => format!("unknown ({})", out.status),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The durability each side runs with, as the table's footnotes.
pub const DURABILITY: &[(&str, &str)] = &[
    (
        "jobledger",
        "WAL, `synchronous=FULL` on every connection; a command is acknowledged only after its \
         group commit is fsynced",
    ),
    (
        "apalis (defaults)",
        "its README's event-driven worker: `SqliteStorage::connect_with_callback` + `setup` + \
         hook stream with a 500 ms polling fallback, `Config::default()`; `setup` sets WAL and runs \
         `PRAGMA synchronous = OFF` on the one pooled connection it happens to use, the others \
         keep SQLite's FULL, so some commits are not fsynced. Weaker than jobledger",
    ),
    (
        "apalis (FULL)",
        "same worker, `setup` run on a throwaway pool, every measured connection WAL + \
         `synchronous=FULL` (checked at start): equal durability",
    ),
    (
        "cqrs-es (defaults)",
        "`sqlite_es::default_sqlite_pool`: WAL + `synchronous=NORMAL` — commits are not fsynced \
         (safe against a process crash, not a power loss). Weaker than jobledger",
    ),
    (
        "cqrs-es (FULL)",
        "same pool with `synchronous=FULL` (equal durability)",
    ),
];
