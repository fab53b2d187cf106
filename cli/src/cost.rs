//! `jobledger cost`: a monthly estimate from the embedded price table — Fargate (Spot and
//! on-demand) plus model tokens — next to an always-on EC2 worker of similar size.

use anyhow::{Result, bail};
use jobledger_events::event::Capacity;
use jobledger_workers::backends::pricing::PriceTable;

/// Hours in an average month (365 × 24 / 12), as AWS prices monthly.
const HOURS_PER_MONTH: f64 = 730.0;

/// Inputs of the estimate.
#[derive(clap::Args, Clone, Debug)]
pub struct CostArgs {
    /// Jobs per month.
    #[arg(long)]
    pub jobs: u64,
    /// Average wall time of one job's attempt, in seconds.
    #[arg(long)]
    pub avg_seconds: f64,
    /// vCPUs of the worker task.
    #[arg(long, default_value_t = 1.0)]
    pub vcpu: f64,
    /// Memory of the worker task, in MB.
    #[arg(long, default_value_t = 2048)]
    pub memory_mb: u64,
    /// Share of task time that runs on Fargate Spot (the rest falls back to on-demand), 0–1.
    #[arg(long, default_value_t = 0.9)]
    pub spot_share: f64,
    /// Price ARM64 (Graviton) tasks instead of x86_64.
    #[arg(long)]
    pub arm64: bool,
    /// Model id from the price table (e.g. gpt-4o-mini, anthropic.claude-3-haiku-20240307-v1:0).
    #[arg(long)]
    pub model: Option<String>,
    /// Average model input tokens per job.
    #[arg(long, default_value_t = 0)]
    pub avg_input_tokens: u64,
    /// Average model output tokens per job.
    #[arg(long, default_value_t = 0)]
    pub avg_output_tokens: u64,
}

/// The computed estimate, in USD per month.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Fargate compute.
    pub fargate: f64,
    /// Model tokens (the same on either platform).
    pub tokens: f64,
    /// The instance compared against.
    pub ec2_instance: String,
    /// Its hourly price.
    pub ec2_hour_usd: f64,
    /// Instances needed to do the month's work always on (at least 1).
    pub ec2_count: u64,
    /// Instances plus storage.
    pub ec2: f64,
    /// Task hours of work in the month.
    pub busy_hours: f64,
}

/// Computes the estimate (pure; the table is passed in so tests can pin it).
pub fn estimate(args: &CostArgs, prices: &PriceTable) -> Result<Estimate> {
    if !(0.0..=1.0).contains(&args.spot_share) {
        bail!(
            "--spot-share must be between 0 and 1, got {}",
            args.spot_share
        );
    }
    if !(args.avg_seconds.is_finite() && args.avg_seconds >= 0.0) {
        bail!("--avg-seconds must be a non-negative number of seconds");
    }
    if !(args.vcpu.is_finite() && args.vcpu > 0.0) {
        bail!("--vcpu must be positive");
    }
    let seconds = args.jobs as f64 * args.avg_seconds;
    let per_second = |capacity| {
        prices.fargate_usd_per_second(args.vcpu, args.memory_mb, Some(capacity), args.arm64)
    };
    let fargate = seconds
        * (args.spot_share * per_second(Capacity::FargateSpot)
            + (1.0 - args.spot_share) * per_second(Capacity::Fargate));
    let tokens = match &args.model {
        Some(model) => {
            let Some(price) = prices.model(model) else {
                let known: Vec<&str> = prices.models.keys().map(String::as_str).collect();
                bail!(
                    "no price for model {model:?} in the price table {} (known: {})",
                    prices.version,
                    known.join(", ")
                );
            };
            args.jobs as f64 * price.cost(args.avg_input_tokens, args.avg_output_tokens)
        }
        None if args.avg_input_tokens + args.avg_output_tokens > 0 => {
            bail!("--avg-input-tokens/--avg-output-tokens need --model to be priced")
        }
        None => 0.0,
    };
    let Some(instance) = prices.ec2_for(args.vcpu, args.memory_mb) else {
        bail!(
            "no EC2 instance in the price table has {} vCPU and {} MB",
            args.vcpu,
            args.memory_mb
        );
    };
    let busy_hours = seconds / 3600.0;
    let ec2_count = ((busy_hours / HOURS_PER_MONTH).ceil() as u64).max(1);
    let ec2 =
        ec2_count as f64 * (instance.hour_usd * HOURS_PER_MONTH + prices.ec2_storage.month_usd);
    Ok(Estimate {
        fargate,
        tokens,
        ec2_instance: instance.instance.clone(),
        ec2_hour_usd: instance.hour_usd,
        ec2_count,
        ec2,
        busy_hours,
    })
}

/// Renders the estimate as the table `jobledger cost` prints.
pub fn render(args: &CostArgs, prices: &PriceTable, e: &Estimate) -> String {
    let jobs = args.jobs.max(1) as f64;
    let arch = if args.arm64 { "ARM64" } else { "x86_64" };
    let model = args.model.as_deref().unwrap_or("none");
    let mut out = format!(
        "Monthly estimate: {} jobs × {} s on {} vCPU / {} MB ({arch}), {:.0}% Fargate Spot\n\
         Prices: table {} read on {} ({}); Spot at {:.0}% of on-demand (estimate)\n\n",
        args.jobs,
        args.avg_seconds,
        args.vcpu,
        args.memory_mb,
        args.spot_share * 100.0,
        prices.version,
        prices.read_on,
        prices.fargate.region,
        prices.fargate.spot_share * 100.0,
    );
    let row = |label: &str, month: f64| {
        format!(
            "{label:<52} {:>12} {:>12}\n",
            format!("${:.6}", month / jobs),
            format!("${month:.2}")
        )
    };
    out += &format!("{:<52} {:>12} {:>12}\n", "", "per job", "per month");
    out += &row("Fargate compute", e.fargate);
    out += &row(
        &format!(
            "Model tokens ({model}: {} in / {} out per job)",
            args.avg_input_tokens, args.avg_output_tokens
        ),
        e.tokens,
    );
    out += &row("Total, serverless (pay per job)", e.fargate + e.tokens);
    out += "\n";
    out += &row(
        &format!(
            "Always-on EC2: {} × {} (${}/h × 730 h + {})",
            e.ec2_count, e.ec2_instance, e.ec2_hour_usd, prices.ec2_storage.what
        ),
        e.ec2,
    );
    out += &row(
        "Total, always-on EC2 (plus the same tokens)",
        e.ec2 + e.tokens,
    );
    out += &format!(
        "\nWork: {:.1} task-hours a month ({:.1}% of one always-on instance).\n",
        e.busy_hours,
        e.busy_hours / HOURS_PER_MONTH * 100.0
    );
    let (cheaper, saving) = if e.fargate <= e.ec2 {
        ("Fargate", e.ec2 - e.fargate)
    } else {
        ("EC2", e.fargate - e.ec2)
    };
    out += &format!(
        "{cheaper} is cheaper by ${saving:.2} a month. EC2 assumes on-demand Linux in {}, no \
         reservation or Savings Plan, one instance per 730 busy hours; it excludes the people-time \
         of patching and scaling it.\n",
        prices.fargate.region
    );
    out
}

/// Prints the estimate for `args` with the embedded price table.
pub fn run(args: CostArgs) -> Result<()> {
    let prices = PriceTable::embedded();
    let e = estimate(&args, prices)?;
    print!("{}", render(&args, prices, &e));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args() -> CostArgs {
        CostArgs {
            jobs: 1000,
            avg_seconds: 120.0,
            vcpu: 1.0,
            memory_mb: 2048,
            spot_share: 1.0,
            arm64: false,
            model: Some("gpt-4o-mini".into()),
            avg_input_tokens: 100_000,
            avg_output_tokens: 10_000,
        }
    }

    #[test]
    fn the_estimate_is_compute_plus_tokens_against_an_always_on_instance() {
        let p = PriceTable::embedded();
        let e = estimate(&args(), p).unwrap();
        let hourly = p.fargate.x86_64.vcpu_hour_usd + 2.0 * p.fargate.x86_64.gb_hour_usd;
        let fargate = 1000.0 * 120.0 / 3600.0 * hourly * p.fargate.spot_share;
        assert!((e.fargate - fargate).abs() < 1e-9);
        assert!((e.tokens - 1000.0 * (0.1 * 0.15 + 0.01 * 0.6)).abs() < 1e-9);
        assert_eq!(e.ec2_instance, "t3.small");
        assert_eq!(e.ec2_count, 1);
        assert!((e.ec2 - (0.0208 * 730.0 + p.ec2_storage.month_usd)).abs() < 1e-9);
        let table = render(&args(), p, &e);
        assert!(
            table.contains(&p.read_on) && table.contains("t3.small"),
            "{table}"
        );
        assert!(table.contains("Fargate is cheaper"), "{table}");
    }

    #[test]
    fn on_demand_costs_more_than_spot_and_busy_months_need_more_instances() {
        let p = PriceTable::embedded();
        let spot = estimate(&args(), p).unwrap();
        let od = estimate(
            &CostArgs {
                spot_share: 0.0,
                ..args()
            },
            p,
        )
        .unwrap();
        assert!(od.fargate > spot.fargate * 3.0);
        let busy = estimate(
            &CostArgs {
                jobs: 100_000,
                avg_seconds: 60.0,
                ..args()
            },
            p,
        )
        .unwrap();
        assert_eq!(busy.ec2_count, 3); // 1,667 task-hours
    }

    #[test]
    fn unknown_models_and_bad_shares_are_refused() {
        let p = PriceTable::embedded();
        let err = estimate(
            &CostArgs {
                model: Some("gpt-99".into()),
                ..args()
            },
            p,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no price for model"));
        assert!(
            estimate(
                &CostArgs {
                    spot_share: 1.5,
                    ..args()
                },
                p
            )
            .is_err()
        );
        assert!(
            estimate(
                &CostArgs {
                    model: None,
                    ..args()
                },
                p
            )
            .is_err()
        );
    }
}
