//! Keeps `docs/ledger-format.md` honest: its worked example (fenced blocks with the info string
//! `ledger-example …`) must match, byte for byte, what the code computes; and the stdlib-only
//! Python verifier `scripts/verify_ledger.py` must accept real histories and refuse tampered ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use jobledger_events::chain::{canonical_bytes, compute_hash, verify_chain};
use jobledger_events::command::{Clock, Command};
use jobledger_events::event::{Capacity, JobEvent, Usage};
use jobledger_events::execute::{CommandContext, record};
use jobledger_events::spec::{Item, JobInput, JobKind, JobSpec, Notify};
use jobledger_events::{Hash, Job, JobId, RecordedEvent};
use uuid::Uuid;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a valid fixture time")
        .with_timezone(&Utc)
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("a valid fixture uuid")
}

/// Records `events` as one command would, then pins the event ids to fixed values (which changes
/// the hashes, so they are recomputed along the chain).
fn record_fixed(
    history: &mut Vec<RecordedEvent>,
    job_id: JobId,
    events: &[JobEvent],
    ctx: &CommandContext,
    event_ids: &[Uuid],
) {
    let mut prev = history.last().map_or(Hash::ZERO, |e| e.hash);
    for (mut e, id) in record(job_id, history.len() as u64, prev, events, ctx)
        .into_iter()
        .zip(event_ids)
    {
        e.event_id = *id;
        e.prev_hash = prev;
        e.hash = compute_hash(&e);
        prev = e.hash;
        history.push(e);
    }
}

fn ctx(
    actor: &str,
    correlation_id: &str,
    causation_id: &str,
    now: DateTime<Utc>,
) -> CommandContext {
    CommandContext {
        actor: actor.into(),
        correlation_id: correlation_id.into(),
        causation_id: causation_id.into(),
        now,
        idempotency: None,
    }
}

fn decide(job: &Job, cmd: &Command) -> Vec<JobEvent> {
    job.decide(cmd)
        .unwrap_or_else(|r| panic!("{cmd:?} rejected: {r}"))
}

/// The worked example of the document: a job submitted, then queued.
fn worked_example() -> Vec<RecordedEvent> {
    let job_id = JobId(uuid("01946a1c-9a00-7000-8000-00000000c0de"));
    let mut metadata = serde_json::Map::new();
    metadata.insert("site".into(), "blog".into());
    metadata.insert("sample_rate".into(), serde_json::json!(0.0000001));
    let spec = JobSpec {
        kind: JobKind::MetaDescription,
        input: JobInput::Items {
            items: vec![Item {
                id: "post-1".into(),
                text: Some("Café \"Zoë\" opens at 7\nDaily specials".into()),
                ..Item::default()
            }],
        },
        max_attempts: 3,
        timeout_s: 3600,
        priority: 0,
        notify: Notify::default(),
        metadata,
        idempotency_key: Some("req-7f3a".into()),
        max_tokens: None,
    };
    let mut history = Vec::new();
    let mut job = Job::default();
    let submitted = decide(&job, &Command::Submit(spec));
    record_fixed(
        &mut history,
        job_id,
        &submitted,
        &ctx(
            "api-key:demo",
            "req-7f3a",
            "req-7f3a",
            time("2025-01-15T10:00:00Z"),
        ),
        &[uuid("01946a1c-9a00-7001-8000-000000000001")],
    );
    job = submitted.iter().fold(job, Job::evolve);
    let queued = decide(
        &job,
        &Command::MarkQueued {
            attempt: 1,
            message_id: "msg-1".into(),
        },
    );
    record_fixed(
        &mut history,
        job_id,
        &queued,
        &ctx(
            "system:dispatcher",
            "req-7f3a",
            "01946a1c-9a00-7001-8000-000000000001",
            time("2025-01-15T10:00:01.25Z"),
        ),
        &[uuid("01946a1c-9ee2-7002-8000-000000000002")],
    );
    history
}

/// The fenced blocks of the document whose info string starts with `ledger-example`, by the rest
/// of the info string; the content without its final newline.
fn doc_blocks() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(repo_file("docs/ledger-format.md"))
        .expect("docs/ledger-format.md is readable");
    let mut blocks = BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim_end().strip_prefix("```ledger-example ") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let previous = blocks.insert(name.trim().to_string(), body.join("\n"));
        assert!(previous.is_none(), "two blocks named {name}");
    }
    blocks
}

fn jsonl(history: &[RecordedEvent], pin: Option<&RecordedEvent>) -> String {
    let mut lines: Vec<String> = history
        .iter()
        .map(|e| serde_json::to_string(e).expect("an envelope serialises"))
        .collect();
    if let Some(head) = pin {
        lines.push(pin_line(head.job_id, head.version, &head.hash.to_hex()));
    }
    lines.join("\n")
}

fn pin_line(job_id: JobId, version: u64, hash: &str) -> String {
    serde_json::json!({"pin": {"job_id": job_id, "version": version, "hash": hash}}).to_string()
}

/// What the document must show, by block name.
fn expected_blocks(history: &[RecordedEvent]) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for e in history {
        let canonical = String::from_utf8(canonical_bytes(e)).expect("canonical bytes are UTF-8");
        want.insert(format!("canonical-v{}", e.version), canonical);
        want.insert(format!("hash-v{}", e.version), e.hash.to_hex());
    }
    want.insert("export".into(), jsonl(history, history.last()));
    want
}

#[test]
fn the_worked_example_in_the_document_matches_the_code_byte_for_byte() {
    let history = worked_example();
    assert_eq!(verify_chain(&history), vec![]);
    let got = doc_blocks();
    // Every stale block at once, each printed ready to paste into the document.
    let stale: Vec<String> = expected_blocks(&history)
        .into_iter()
        .filter(|(name, want)| got.get(name) != Some(want))
        .map(|(name, want)| format!("```ledger-example {name}\n{want}\n```"))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/ledger-format.md is out of date; the code computes:\n{}",
        stale.join("\n")
    );
}

#[test]
fn the_worked_example_shows_the_rules_the_document_explains() {
    let history = worked_example();
    let v1 = String::from_utf8(canonical_bytes(&history[0])).expect("UTF-8");
    // Non-ASCII is written as UTF-8, quotes and newlines escaped, 0.0000001 in exponent form.
    assert!(
        v1.contains("Café \\\"Zoë\\\" opens at 7\\nDaily specials"),
        "{v1}"
    );
    assert!(v1.contains("\"sample_rate\":1e-7"), "{v1}");
    assert!(
        v1.contains(&format!("\"prev_hash\":\"{}\"", "0".repeat(64))),
        "{v1}"
    );
    assert!(
        v1.contains("\"at\":\"2025-01-15T10:00:00.000000Z\""),
        "{v1}"
    );
    assert_eq!(history[1].prev_hash, history[0].hash);
}

#[test]
fn the_exported_example_in_the_document_verifies_and_decodes() {
    let blocks = doc_blocks();
    let export = blocks
        .get("export")
        .expect("the document has an export block");
    let events: Vec<RecordedEvent> = export
        .lines()
        .filter(|l| !l.contains("\"pin\""))
        .map(|l| serde_json::from_str(l).expect("an envelope line"))
        .collect();
    assert_eq!(verify_chain(&events), vec![]);
    let decoded: Vec<&str> = events
        .iter()
        .map(|e| e.decode().expect("decodes").event_type())
        .collect();
    assert_eq!(decoded, ["JobSubmitted", "JobQueued"]);
    let code = expected_blocks(&worked_example());
    assert_eq!(blocks.get("hash-v2"), code.get("hash-v2"));
}

// ---------------------------------------------------------------------------------------------
// The Python verifier.

/// Runs the verifier on `content`; `None` when python3 is not installed.
fn python_verify(content: &str) -> Option<(bool, String)> {
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
    file.write_all(content.as_bytes()).expect("written");
    file.write_all(b"\n").expect("written");
    let output = match std::process::Command::new("python3")
        .arg(repo_file("scripts/verify_ledger.py"))
        .arg(file.path())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("NOTICE: python3 is not installed; skipping the Python verifier check");
            return None;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

fn t(s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 8, 0, 0)
        .single()
        .expect("valid")
        + chrono::Duration::microseconds(i64::from(s) * 1_234_567)
}

/// Runs `commands` through the aggregate and records each batch.
fn drive(job_id: JobId, commands: &[Command], actor: &str) -> Vec<RecordedEvent> {
    let mut job = Job::default();
    let mut history: Vec<RecordedEvent> = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let events = decide(&job, cmd);
        let head = history.last().map_or(Hash::ZERO, |e| e.hash);
        let ctx = ctx(actor, "corr-☃", &format!("cause-{i}"), t(i as u32));
        history.extend(record(job_id, job.version, head, &events, &ctx));
        job = events.iter().fold(job, Job::evolve);
    }
    history
}

fn a_spec(metadata: serde_json::Value, text: &str) -> JobSpec {
    JobSpec {
        kind: JobKind::ContentAnalysis,
        input: JobInput::Items {
            items: vec![Item {
                id: "item-1".into(),
                text: Some(text.into()),
                ..Item::default()
            }],
        },
        max_attempts: 2,
        timeout_s: 600,
        priority: -3,
        notify: Notify {
            slack: false,
            notion: true,
        },
        metadata: match metadata {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
        idempotency_key: None,
        max_tokens: None,
    }
}

/// A job that fails once, then succeeds with fractional usage figures.
fn a_full_history(job_id: JobId) -> Vec<RecordedEvent> {
    let metadata = serde_json::json!({
        "sample_rate": 0.0000001,
        "big": 1e21,
        "tiny": 5e-324,
        "neg": -0.5,
        "max_safe": 9_007_199_254_740_991u64,
        "whole_float": 7.0,
        "ｱ": "half-width katakana sorts after the emoji key in UTF-16",
        "😀": ["astral", "\u{1}\t\"\\", "line\u{2028}sep", "del\u{7f}"],
    });
    let clock = |s| Clock {
        now: t(s),
        jitter: 0.37,
    };
    let commands = vec![
        Command::Submit(a_spec(metadata, "Grüße, 世界! \u{0}")),
        Command::MarkQueued {
            attempt: 1,
            message_id: "m-1".into(),
        },
        Command::RecordLaunch {
            attempt: 1,
            task_arn: "arn:aws:ecs:eu-west-1:1:task/c/abc".into(),
            capacity: Capacity::FargateSpot,
        },
        Command::StartAttempt {
            attempt: 1,
            worker: "worker:abc".into(),
        },
        Command::FailAttempt {
            attempt: 1,
            error: "model said «no»".into(),
            retryable: true,
            clock: clock(4),
        },
        Command::MarkQueued {
            attempt: 2,
            message_id: "m-2".into(),
        },
        Command::StartAttempt {
            attempt: 2,
            worker: "local".into(),
        },
        Command::ReportProgress {
            attempt: 2,
            done: 1,
            failed: 0,
            total: 1,
            checkpoint_uri: Some("file://ckpt/2".into()),
        },
        Command::Succeed {
            attempt: 2,
            result_uri: "file://results/2.jsonl".into(),
            result_sha256: "9f".repeat(32),
            items_ok: 1,
            items_failed: 0,
            usage: Usage {
                duration_ms: 4_321,
                vcpu: 0.25,
                memory_mb: 512,
                capacity: Some(Capacity::Local),
                input_tokens: 1_234,
                output_tokens: 56,
                model: Some("builtin".into()),
                cost_usd: 0.0000123,
            },
        },
    ];
    drive(job_id, &commands, "worker:ümlaut")
}

/// Floats spread over the whole double range (splitmix64 bit patterns), for the number formatting.
fn spread_floats(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    let mut out = Vec::new();
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let f = f64::from_bits(z);
        // Also the decimal-looking values around the exponent-form thresholds (1e-7, 1e21).
        let g = ((z % 2_000_000) as f64) * 10f64.powi((z % 40) as i32 - 20);
        for v in [f, g] {
            if v.is_finite() {
                out.push(v);
            }
        }
    }
    out
}

fn float_histories() -> Vec<RecordedEvent> {
    (0..24u64)
        .flat_map(|n| {
            let floats = spread_floats(n + 1, 40);
            let job_id = JobId(Uuid::from_u128(
                0x0194_0000_0000_7000_8000_0000_0000_0000 + u128::from(n),
            ));
            drive(
                job_id,
                &[Command::Submit(a_spec(
                    serde_json::json!({ "f": floats }),
                    "x",
                ))],
                "api-key:floats",
            )
        })
        .collect()
}

fn interleave(a: &[RecordedEvent], b: &[RecordedEvent]) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    for i in 0..a.len().max(b.len()) {
        out.extend(a.get(i).cloned());
        out.extend(b.get(i).cloned());
    }
    out
}

#[test]
fn the_python_verifier_accepts_real_histories() {
    let first = a_full_history(JobId(uuid("01950000-0000-7000-8000-000000000001")));
    let second = a_full_history(JobId(uuid("01950000-0000-7000-8000-000000000002")));
    assert_eq!(verify_chain(&first), vec![]);
    let mut lines = vec![jsonl(&interleave(&first, &second), None)];
    lines.push(pin_line(first[0].job_id, 3, &first[2].hash.to_hex()));
    lines.push(pin_line(
        second[0].job_id,
        second.len() as u64,
        &second[second.len() - 1].hash.to_hex(),
    ));
    lines.push(jsonl(&float_histories(), None));
    let content = lines.join("\n");
    assert!(content.contains("\"cost_usd\":0.0000123") && content.contains("\"vcpu\":0.25"));
    let Some((ok, output)) = python_verify(&content) else {
        return;
    };
    assert!(ok, "the verifier refused a valid ledger:\n{output}");
    assert!(
        output.contains("OK: 44 events, 26 jobs, 2 pins"),
        "{output}"
    );
}

#[test]
fn the_python_verifier_accepts_the_documents_example() {
    let blocks = doc_blocks();
    let export = blocks
        .get("export")
        .expect("the document has an export block");
    let Some((ok, output)) = python_verify(export) else {
        return;
    };
    assert!(ok, "{output}");
}

#[test]
fn the_python_verifier_refuses_tampered_histories() {
    let history = a_full_history(JobId(uuid("01950000-0000-7000-8000-000000000003")));
    let head = history.last().expect("events");
    let good = jsonl(&history, Some(head));
    let tampered = [
        (
            "a cost changed",
            good.replacen("\"cost_usd\":0.0000123", "\"cost_usd\":0.0000124", 1),
        ),
        (
            "a non-ASCII letter changed",
            good.replacen("Grüße", "Grüsse", 1),
        ),
        (
            "an actor changed",
            good.replacen("worker:ümlaut", "worker:umlaut", 1),
        ),
        ("the last event dropped", {
            let mut lines: Vec<&str> = good.lines().collect();
            lines.remove(lines.len() - 2);
            lines.join("\n")
        }),
        ("a middle event dropped", {
            let mut lines: Vec<&str> = good.lines().collect();
            lines.remove(4);
            lines.join("\n")
        }),
        (
            "a pin that does not match",
            good.replacen(&head.hash.to_hex(), &"0".repeat(64), 1),
        ),
    ];
    for (what, content) in tampered {
        assert_ne!(content, good, "{what}: the tampering did not apply");
        let Some((ok, output)) = python_verify(&content) else {
            return;
        };
        assert!(!ok, "the verifier accepted a ledger with {what}:\n{output}");
        assert!(output.contains("FAILED"), "{what}: {output}");
    }
}
