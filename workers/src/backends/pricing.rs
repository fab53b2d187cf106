//! The versioned price table (`workers/pricing/prices.json`, embedded at build time): Fargate
//! compute per vCPU-hour and GB-hour, model tokens per million, and EC2 instances for comparisons.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use jobledger_events::event::Capacity;
use serde::Deserialize;

/// The embedded price file. A new file (new `version` and `read_on`) replaces it when prices change.
pub const PRICES_JSON: &str = include_str!("../../pricing/prices.json");

/// Per-hour prices of one Fargate CPU architecture.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct FargateRate {
    /// USD per vCPU-hour.
    pub vcpu_hour_usd: f64,
    /// USD per GB-hour of memory.
    pub gb_hour_usd: f64,
}

/// Fargate prices for one region.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct FargatePrices {
    /// The region the prices are for.
    pub region: String,
    /// Linux/x86_64.
    pub x86_64: FargateRate,
    /// Linux/ARM64 (Graviton).
    pub arm64: FargateRate,
    /// Spot over on-demand (Spot prices float; this is an estimate).
    pub spot_share: f64,
}

/// An on-demand EC2 instance, for the always-on comparison.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Ec2Instance {
    /// The instance type, e.g. `t3.small`.
    pub instance: String,
    /// vCPUs.
    pub vcpu: f64,
    /// Memory.
    pub memory_mb: u64,
    /// On-demand USD per hour.
    pub hour_usd: f64,
}

/// Storage an always-on instance also pays for.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Ec2Storage {
    /// What is assumed.
    pub what: String,
    /// USD per month.
    pub month_usd: f64,
}

/// Token prices of one model.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct ModelPrice {
    /// USD per million input tokens.
    pub input_per_mtok_usd: f64,
    /// USD per million output tokens.
    pub output_per_mtok_usd: f64,
}

impl ModelPrice {
    /// What `input` and `output` tokens cost, in USD.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_mtok_usd + output as f64 * self.output_per_mtok_usd) / 1e6
    }
}

/// The whole price table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PriceTable {
    /// Version of the table (a date).
    pub version: String,
    /// When the prices were read from the vendors' pages.
    pub read_on: String,
    /// Caveats.
    pub note: String,
    /// Where the prices were read.
    pub sources: Vec<String>,
    /// Fargate compute.
    pub fargate: FargatePrices,
    /// EC2 instances, smallest first.
    pub ec2: Vec<Ec2Instance>,
    /// Storage of an always-on instance.
    pub ec2_storage: Ec2Storage,
    /// Token prices by model id.
    pub models: BTreeMap<String, ModelPrice>,
}

/// Bedrock cross-region inference profiles prefix the model id (`us.anthropic…`); they bill as the model.
const PROFILE_PREFIXES: [&str; 5] = ["us.", "eu.", "apac.", "us-gov.", "global."];

impl PriceTable {
    /// Parses a price file.
    pub fn parse(json: &str) -> Result<PriceTable, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The embedded table (parsed once; the file is checked by a unit test, so it parses).
    pub fn embedded() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| match PriceTable::parse(PRICES_JSON) {
            Ok(t) => t,
            // Unreachable in a tested build; an empty table prices everything at zero rather than panic.
            Err(e) => {
                tracing::error!(error = %e, "embedded price table is invalid");
                PriceTable {
                    version: "invalid".into(),
                    read_on: "invalid".into(),
                    note: e.to_string(),
                    sources: Vec::new(),
                    fargate: FargatePrices {
                        region: String::new(),
                        x86_64: FargateRate {
                            vcpu_hour_usd: 0.0,
                            gb_hour_usd: 0.0,
                        },
                        arm64: FargateRate {
                            vcpu_hour_usd: 0.0,
                            gb_hour_usd: 0.0,
                        },
                        spot_share: 1.0,
                    },
                    ec2: Vec::new(),
                    ec2_storage: Ec2Storage {
                        what: String::new(),
                        month_usd: 0.0,
                    },
                    models: BTreeMap::new(),
                }
            }
        })
    }

    /// The price of `model`: an exact id, else the id without an inference-profile prefix, else the
    /// longest listed id it starts with (dated variants such as `gpt-4o-mini-2024-07-18`).
    pub fn model(&self, model: &str) -> Option<ModelPrice> {
        let bare = PROFILE_PREFIXES
            .iter()
            .find_map(|p| model.strip_prefix(p))
            .unwrap_or(model);
        if let Some(p) = self.models.get(model).or_else(|| self.models.get(bare)) {
            return Some(*p);
        }
        self.models
            .iter()
            .filter(|(id, _)| bare.starts_with(id.as_str()))
            .max_by_key(|(id, _)| id.len())
            .map(|(_, p)| *p)
    }

    /// What `input`/`output` tokens of `model` cost; an unlisted model (a local Ollama, say) is free.
    pub fn token_cost(&self, model: &str, input: u64, output: u64) -> f64 {
        self.model(model).map_or(0.0, |p| p.cost(input, output))
    }

    /// Fargate USD per second for a task of this size and capacity (local runs cost nothing).
    pub fn fargate_usd_per_second(
        &self,
        vcpu: f64,
        memory_mb: u64,
        capacity: Option<Capacity>,
        arm64: bool,
    ) -> f64 {
        let rate = if arm64 {
            self.fargate.arm64
        } else {
            self.fargate.x86_64
        };
        let hourly = vcpu * rate.vcpu_hour_usd + memory_mb as f64 / 1024.0 * rate.gb_hour_usd;
        match capacity {
            Some(Capacity::Fargate) => hourly / 3600.0,
            Some(Capacity::FargateSpot) => hourly * self.fargate.spot_share / 3600.0,
            Some(Capacity::Local) | None => 0.0,
        }
    }

    /// The cheapest listed instance with at least this many vCPUs and this much memory.
    pub fn ec2_for(&self, vcpu: f64, memory_mb: u64) -> Option<&Ec2Instance> {
        self.ec2
            .iter()
            .filter(|i| i.vcpu >= vcpu && i.memory_mb >= memory_mb)
            .min_by(|a, b| a.hour_usd.total_cmp(&b.hour_usd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_and_says_when_it_was_read() {
        let t = PriceTable::parse(PRICES_JSON).unwrap();
        assert!(t.read_on.len() == 10 && t.read_on.starts_with("20"));
        assert_eq!(&t, PriceTable::embedded());
        assert!(!t.models.is_empty() && !t.ec2.is_empty());
    }

    #[test]
    fn model_ids_match_exactly_by_profile_or_by_dated_variant() {
        let t = PriceTable::embedded();
        let haiku = t.model("anthropic.claude-3-haiku-20240307-v1:0").unwrap();
        assert_eq!(
            t.model("us.anthropic.claude-3-haiku-20240307-v1:0"),
            Some(haiku)
        );
        assert_eq!(t.model("gpt-4o-mini-2024-07-18"), t.model("gpt-4o-mini"));
        assert_ne!(t.model("gpt-4o-mini"), t.model("gpt-4o"));
        assert_eq!(t.model("llama3.2:3b"), None);
        assert_eq!(t.token_cost("llama3.2:3b", 1000, 1000), 0.0);
        let p = t.model("gpt-4o-mini").unwrap();
        assert!((p.cost(1_000_000, 1_000_000) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn spot_costs_the_spot_share_of_on_demand_and_local_nothing() {
        let t = PriceTable::embedded();
        let od = t.fargate_usd_per_second(1.0, 2048, Some(Capacity::Fargate), false);
        let spot = t.fargate_usd_per_second(1.0, 2048, Some(Capacity::FargateSpot), false);
        assert!((od * 3600.0 - (0.04048 + 2.0 * 0.004445)).abs() < 1e-12);
        assert!((spot - od * t.fargate.spot_share).abs() < 1e-15);
        assert_eq!(
            t.fargate_usd_per_second(1.0, 2048, Some(Capacity::Local), false),
            0.0
        );
        assert_eq!(t.ec2_for(1.0, 2048).unwrap().instance, "t3.small");
        assert_eq!(t.ec2_for(4.0, 8192).unwrap().instance, "t3.xlarge");
    }
}
