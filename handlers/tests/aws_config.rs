//! The Lambda binaries' configuration: every variable of the Terraform contract is read, and a
//! missing or malformed one fails at cold start with its name.
#![cfg(feature = "aws")]

use std::collections::HashMap;
use std::time::Duration;

use jobledger_handlers::aws::ConfigError;
use jobledger_handlers::aws::config::{
    ApiLambdaConfig, DispatcherConfig, LauncherConfig, ProjectorConfig, SweeperConfig,
};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

const LAUNCHER: &[(&str, &str)] = &[
    ("EVENTS_TABLE", "events"),
    ("JOBS_QUEUE_URL", "https://sqs/jobs.fifo"),
    ("ECS_CLUSTER", "jobs"),
    ("WORKER_TASK_DEFINITION", "worker:3"),
    ("WORKER_CONTAINER_NAME", "worker"),
    ("WORKER_SUBNETS", "subnet-a, subnet-b"),
    ("WORKER_SECURITY_GROUPS", "sg-1"),
];

#[test]
fn the_launcher_reads_its_ecs_settings_and_splits_the_lists() {
    let cfg = LauncherConfig::from_lookup(env(LAUNCHER)).expect("complete config");
    assert_eq!(cfg.events_table, "events");
    assert_eq!(cfg.jobs_queue_url, "https://sqs/jobs.fifo");
    assert_eq!(cfg.ecs.cluster, "jobs");
    assert_eq!(cfg.ecs.task_definition, "worker:3");
    assert_eq!(cfg.ecs.container_name, "worker");
    assert_eq!(cfg.ecs.subnets, ["subnet-a", "subnet-b"]);
    assert_eq!(cfg.ecs.security_groups, ["sg-1"]);
}

#[test]
fn a_missing_variable_is_named_in_the_error() {
    for (i, (name, _)) in LAUNCHER.iter().enumerate() {
        let mut pairs = LAUNCHER.to_vec();
        pairs.remove(i);
        let err = LauncherConfig::from_lookup(env(&pairs)).expect_err("incomplete config");
        assert_eq!(err, ConfigError::Missing(name), "without {name}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let blank = [("EVENTS_TABLE", "  "), ("JOBS_QUEUE_URL", "q")];
    assert_eq!(
        DispatcherConfig::from_lookup(env(&blank)),
        Err(ConfigError::Missing("EVENTS_TABLE"))
    );
}

#[test]
fn an_empty_list_or_a_bad_number_is_invalid() {
    let mut pairs = LAUNCHER.to_vec();
    pairs[5] = ("WORKER_SUBNETS", " , ");
    assert!(matches!(
        LauncherConfig::from_lookup(env(&pairs)),
        Err(ConfigError::Invalid {
            name: "WORKER_SUBNETS",
            ..
        })
    ));
    let sweeper = [
        ("EVENTS_TABLE", "e"),
        ("JOBS_TABLE", "j"),
        ("HEARTBEAT_TIMEOUT_S", "five minutes"),
    ];
    assert!(matches!(
        SweeperConfig::from_lookup(env(&sweeper)),
        Err(ConfigError::Invalid {
            name: "HEARTBEAT_TIMEOUT_S",
            ..
        })
    ));
}

#[test]
fn every_binary_reads_exactly_its_contract() {
    let api = ApiLambdaConfig::from_lookup(env(&[
        ("EVENTS_TABLE", "e"),
        ("JOBS_TABLE", "j"),
        ("IDEMPOTENCY_TABLE", "i"),
        ("RESULTS_BUCKET", "b"),
        ("RESULT_URL_TTL_S", "900"),
    ]))
    .expect("api config");
    assert_eq!(api.result_url_ttl, Duration::from_secs(900));
    assert_eq!(api.idempotency_table, "i");
    assert_eq!(api.results_bucket, "b");
    let projector =
        ProjectorConfig::from_lookup(env(&[("EVENTS_TABLE", "e"), ("JOBS_TABLE", "j")]))
            .expect("projector config");
    assert_eq!(projector.jobs_table, "j");
    let sweeper = SweeperConfig::from_lookup(env(&[
        ("EVENTS_TABLE", "e"),
        ("JOBS_TABLE", "j"),
        ("HEARTBEAT_TIMEOUT_S", "300"),
    ]))
    .expect("sweeper config");
    assert_eq!(sweeper.heartbeat_timeout, Duration::from_secs(300));
    assert_eq!(
        ApiLambdaConfig::from_lookup(env(&[("EVENTS_TABLE", "e")])),
        Err(ConfigError::Missing("JOBS_TABLE"))
    );
}

#[test]
fn worker_tasks_get_a_public_ip_only_when_asked() {
    let launcher = |extra: &[(&'static str, &'static str)]| {
        LauncherConfig::from_lookup(env(&[LAUNCHER, extra].concat()))
    };
    assert!(!launcher(&[]).expect("default").assign_public_ip);
    assert!(
        !launcher(&[("WORKER_ASSIGN_PUBLIC_IP", "DISABLED")])
            .expect("disabled")
            .assign_public_ip
    );
    assert!(
        launcher(&[("WORKER_ASSIGN_PUBLIC_IP", " ENABLED ")])
            .expect("enabled")
            .assign_public_ip
    );
    let err = launcher(&[("WORKER_ASSIGN_PUBLIC_IP", "yes")]).expect_err("not a switch");
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                name: "WORKER_ASSIGN_PUBLIC_IP",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ENABLED or DISABLED"), "{err}");
}
