//! `EcsTaskLauncher`: one Fargate task per attempt, on Spot when there is Spot capacity.
//!
//! `RunTask` uses the capacity provider `FARGATE_SPOT`; when ECS answers that Spot has no capacity
//! it asks again with `FARGATE`. The first request's `clientToken` is `<job_id>-<attempt>`, so a
//! re-delivered queue message starts no second task; the on-demand fallback uses
//! `<job_id>-<attempt>-ondemand`, since ECS may remember the Spot request's failure under the first
//! token. Should both ever run (a redelivery after the fallback, with Spot back), the ledger lets
//! only one worker claim the attempt and the other exits.

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride, Failure,
    KeyValuePair, NetworkConfiguration, Tag, TaskOverride,
};
use jobledger_events::JobId;
use jobledger_events::event::Capacity;

use super::{sdk_message, sdk_retryable};
use crate::ports::{LaunchError, LaunchResult, TaskLauncher};

/// Where and what to run; from the launcher's environment (see `config.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcsConfig {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Task definition `family[:revision]` or ARN.
    pub task_definition: String,
    /// The container that runs the worker (receives `JOB_ID` and `ATTEMPT`).
    pub container_name: String,
    /// Subnets of the task's network interface (awsvpc).
    pub subnets: Vec<String>,
    /// Security groups of the task's network interface.
    pub security_groups: Vec<String>,
}

/// What the `failures` of a `RunTask` answer mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunFailure {
    /// The capacity provider has no capacity now: try another one, or later.
    NoCapacity(String),
    /// A resource limit (ENIs, …) that frees up: try later.
    Transient(String),
    /// Anything else (a bad task definition, a missing subnet): trying again will not help.
    Permanent(String),
}

/// Classifies `RunTask` failures; the worst one decides (permanent over transient over capacity).
pub fn classify(failures: &[Failure]) -> RunFailure {
    let text = |f: &Failure| {
        format!(
            "{}{}",
            f.reason().unwrap_or("unknown reason"),
            f.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        )
    };
    if failures.is_empty() {
        return RunFailure::Transient("RunTask started no task and reported no failure".into());
    }
    let mut worst = RunFailure::NoCapacity(String::new());
    for f in failures {
        let reason = f.reason().unwrap_or_default();
        let this = if reason.to_ascii_lowercase().contains("capacity") {
            RunFailure::NoCapacity(text(f))
        } else if reason.starts_with("RESOURCE:") {
            RunFailure::Transient(text(f))
        } else {
            RunFailure::Permanent(text(f))
        };
        let rank = |r: &RunFailure| match r {
            RunFailure::NoCapacity(_) => 0,
            RunFailure::Transient(_) => 1,
            RunFailure::Permanent(_) => 2,
        };
        if rank(&this) >= rank(&worst) {
            worst = this;
        }
    }
    worst
}

/// Starts worker tasks on ECS Fargate.
#[derive(Clone, Debug)]
pub struct EcsTaskLauncher {
    client: Client,
    config: EcsConfig,
    public_ip: bool,
}

impl EcsTaskLauncher {
    /// A launcher for `config`'s cluster and task definition; tasks get no public IP.
    pub fn new(client: Client, config: EcsConfig) -> Self {
        EcsTaskLauncher {
            client,
            config,
            public_ip: false,
        }
    }

    /// Gives each task a public IP: tasks in public subnets (no NAT gateway) need one to pull
    /// the image and reach AWS APIs.
    pub fn with_public_ip(mut self, public_ip: bool) -> Self {
        self.public_ip = public_ip;
        self
    }

    /// The `clientToken` of an attempt's first `RunTask`.
    pub fn client_token(job_id: JobId, attempt: u32) -> String {
        format!("{job_id}-{attempt}")
    }

    async fn run(
        &self,
        job_id: JobId,
        attempt: u32,
        capacity: Capacity,
        token: String,
    ) -> Result<Result<String, RunFailure>, LaunchError> {
        let provider = match capacity {
            Capacity::FargateSpot => "FARGATE_SPOT",
            _ => "FARGATE",
        };
        let strategy = CapacityProviderStrategyItem::builder()
            .capacity_provider(provider)
            .weight(1)
            .build()
            .map_err(|e| LaunchError::permanent(e.to_string()))?;
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(self.config.subnets.clone()))
            .set_security_groups(Some(self.config.security_groups.clone()))
            .assign_public_ip(if self.public_ip {
                AssignPublicIp::Enabled
            } else {
                AssignPublicIp::Disabled
            })
            .build()
            .map_err(|e| LaunchError::permanent(e.to_string()))?;
        let env =
            |name: &str, value: String| KeyValuePair::builder().name(name).value(value).build();
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(&self.config.container_name)
                    .environment(env("JOB_ID", job_id.to_string()))
                    .environment(env("ATTEMPT", attempt.to_string()))
                    .build(),
            )
            .build();
        let tag = |key: &str, value: String| Tag::builder().key(key).value(value).build();
        let answer = self
            .client
            .run_task()
            .cluster(&self.config.cluster)
            .task_definition(&self.config.task_definition)
            .capacity_provider_strategy(strategy)
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
            .overrides(overrides)
            .client_token(token)
            .count(1)
            .started_by("jobledger-launcher")
            .enable_ecs_managed_tags(true)
            .tags(tag("job_id", job_id.to_string()))
            .tags(tag("attempt", attempt.to_string()))
            .send()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(e) if sdk_retryable(&e) => {
                return Err(LaunchError::retryable(format!(
                    "RunTask: {}",
                    sdk_message(&e)
                )));
            }
            Err(e) => {
                return Err(LaunchError::permanent(format!(
                    "RunTask: {}",
                    sdk_message(&e)
                )));
            }
        };
        match out.tasks().iter().find_map(|t| t.task_arn()) {
            Some(arn) => Ok(Ok(arn.to_string())),
            None => Ok(Err(classify(out.failures()))),
        }
    }
}

impl TaskLauncher for EcsTaskLauncher {
    async fn launch(&self, job_id: JobId, attempt: u32) -> Result<LaunchResult, LaunchError> {
        let token = Self::client_token(job_id, attempt);
        let spot = self
            .run(job_id, attempt, Capacity::FargateSpot, token.clone())
            .await?;
        let spot_failure = match spot {
            Ok(task_arn) => {
                return Ok(LaunchResult {
                    task_arn,
                    capacity: Capacity::FargateSpot,
                });
            }
            Err(RunFailure::NoCapacity(reason)) => reason,
            Err(RunFailure::Transient(reason)) => return Err(LaunchError::retryable(reason)),
            Err(RunFailure::Permanent(reason)) => return Err(LaunchError::permanent(reason)),
        };
        tracing::info!(%job_id, attempt, reason = spot_failure, "no Fargate Spot capacity; launching on demand");
        match self
            .run(
                job_id,
                attempt,
                Capacity::Fargate,
                format!("{token}-ondemand"),
            )
            .await?
        {
            Ok(task_arn) => Ok(LaunchResult {
                task_arn,
                capacity: Capacity::Fargate,
            }),
            Err(RunFailure::NoCapacity(reason) | RunFailure::Transient(reason)) => {
                Err(LaunchError::retryable(format!(
                    "no Fargate capacity (Spot: {spot_failure}; on demand: {reason})"
                )))
            }
            Err(RunFailure::Permanent(reason)) => Err(LaunchError::permanent(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(reason: &str) -> Failure {
        Failure::builder().reason(reason).build()
    }

    #[test]
    fn capacity_failures_are_told_apart_from_configuration_errors() {
        assert!(matches!(
            classify(&[failure("Capacity is unavailable at this time.")]),
            RunFailure::NoCapacity(_)
        ));
        assert!(matches!(
            classify(&[failure("RESOURCE:ENI")]),
            RunFailure::Transient(_)
        ));
        assert!(matches!(
            classify(&[failure("MISSING")]),
            RunFailure::Permanent(_)
        ));
        assert!(matches!(
            classify(&[failure("Capacity is unavailable"), failure("MISSING")]),
            RunFailure::Permanent(_)
        ));
        assert!(matches!(classify(&[]), RunFailure::Transient(_)));
    }
}
