//! CloudWatch Embedded Metric Format: metrics written as JSON log lines, which CloudWatch turns into
//! metrics without any API call from the Lambda (and which read as plain JSON locally).
//!
//! ```json
//! {"_aws":{"Timestamp":1700000000000,"CloudWatchMetrics":[{"Namespace":"jobledger",
//!   "Dimensions":[["Function"]],"Metrics":[{"Name":"LaunchLatency","Unit":"Milliseconds"}]}]},
//!  "Function":"launcher","LaunchLatency":1234.0,"job_id":"…"}
//! ```

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every jobledger metric.
pub const NAMESPACE: &str = "jobledger";

/// Metric names, so dashboards and alarms have one spelling.
pub mod names {
    /// Jobs entering a status (dimension `Status`).
    pub const JOBS: &str = "Jobs";
    /// Submitted → running, milliseconds.
    pub const LAUNCH_LATENCY: &str = "LaunchLatency";
    /// Queued → launched, milliseconds.
    pub const QUEUE_WAIT: &str = "QueueWait";
    /// Attempts started.
    pub const ATTEMPTS: &str = "Attempts";
    /// Spot interruptions.
    pub const INTERRUPTIONS: &str = "Interruptions";
    /// Cost of finished attempts, USD.
    pub const COST: &str = "CostUsd";
    /// Age of the oldest job waiting to run, seconds (sweeper).
    pub const OLDEST_WAITING_AGE: &str = "OldestWaitingJobAge";
    /// Launches that failed.
    pub const LAUNCH_FAILURES: &str = "LaunchFailures";
}

/// A CloudWatch unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A plain count.
    Count,
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
    /// No unit (money).
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

/// One EMF line under construction: dimensions, metrics and searchable properties.
#[derive(Clone, Debug)]
pub struct Emf {
    at: DateTime<Utc>,
    dimensions: Vec<(String, String)>,
    metrics: Vec<(String, f64, Unit)>,
    properties: Map<String, Value>,
}

impl Emf {
    /// A line for the function `function` (the first dimension of every metric).
    pub fn new(function: &str, at: DateTime<Utc>) -> Self {
        Emf {
            at,
            dimensions: vec![("Function".into(), function.into())],
            metrics: Vec::new(),
            properties: Map::new(),
        }
    }

    /// Adds a dimension (keep them few: each combination is a separate CloudWatch metric).
    pub fn dimension(mut self, name: &str, value: impl Into<String>) -> Self {
        self.dimensions.push((name.into(), value.into()));
        self
    }

    /// Adds a metric value.
    pub fn metric(mut self, name: &str, value: f64, unit: Unit) -> Self {
        self.metrics.push((name.into(), value, unit));
        self
    }

    /// Adds a property: searchable in the log line, not a dimension (job ids go here).
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The JSON object of the line.
    pub fn to_json(&self) -> Value {
        let mut root = self.properties.clone();
        for (name, value) in &self.dimensions {
            root.insert(name.clone(), Value::String(value.clone()));
        }
        for (name, value, _) in &self.metrics {
            root.insert(name.clone(), json!(value));
        }
        let dimension_names: Vec<&str> = self.dimensions.iter().map(|(n, _)| n.as_str()).collect();
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": self.at.timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [dimension_names],
                    "Metrics": metrics,
                }],
            }),
        );
        Value::Object(root)
    }

    /// Writes the line to stdout, where the Lambda log agent (or a local terminal) picks it up.
    /// A line without metrics is not written.
    pub fn emit(&self) {
        if !self.metrics.is_empty() {
            println!("{}", self.to_json());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_declares_its_metrics_and_carries_their_values_at_the_root() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).expect("valid time");
        let line = Emf::new("launcher", at)
            .dimension("Capacity", "FARGATE_SPOT")
            .metric(names::QUEUE_WAIT, 1500.0, Unit::Milliseconds)
            .metric(names::ATTEMPTS, 1.0, Unit::Count)
            .property("job_id", "j-1")
            .to_json();
        assert_eq!(
            line,
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_123_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "jobledger",
                        "Dimensions": [["Function", "Capacity"]],
                        "Metrics": [
                            {"Name": "QueueWait", "Unit": "Milliseconds"},
                            {"Name": "Attempts", "Unit": "Count"}
                        ]
                    }]
                },
                "Function": "launcher",
                "Capacity": "FARGATE_SPOT",
                "QueueWait": 1500.0,
                "Attempts": 1.0,
                "job_id": "j-1"
            })
        );
    }
}
