//! The `sluice loadgen` subcommands: arguments and the glue from them to the harness.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use super::{passthrough, plot, report, step, sweep, workload};
use crate::config::{Config, LogFormat};

#[derive(Subcommand)]
pub enum LoadgenCommand {
    /// Offer open-loop load at each rate of a sweep, check every record comes back, write a JSON report.
    Run(Box<LoadgenRun>),
    /// Forward input and priority records to the output topic with Sluice's client settings and no model.
    Passthrough {
        /// Configuration file (brokers, topics, group and client settings are read from it).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Combine run reports into one Markdown file with SVG pictures.
    Report {
        /// Run reports (JSON from `loadgen run`), in the order to show them.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Directory for NAME.md, NAME-latency.svg and NAME-spectrum.svg.
        #[arg(long)]
        out_dir: PathBuf,
        /// Base name of the files.
        #[arg(long)]
        name: String,
        /// Title of the report.
        #[arg(long)]
        title: String,
        /// Draw the spectrum at the step nearest this rate (default: each system's half-max step).
        #[arg(long)]
        spectrum_rate: Option<f64>,
    },
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
pub struct LoadgenRun {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "realtime-inference-input")]
    input_topic: String,
    #[arg(long, default_value = "priority-inference")]
    priority_topic: String,
    #[arg(long, default_value = "realtime-inference-output")]
    output_topic: String,
    #[arg(long, default_value = "realtime-inference-dlq")]
    dlq_topic: String,
    /// Rates to offer: `R1,R2,...` or `START:FACTOR:MAX` (records per second).
    #[arg(long)]
    rates: String,
    /// Inter-arrival times.
    #[arg(long, value_enum, default_value = "poisson")]
    arrival: super::schedule::Arrival,
    /// Length of each step, warm-up included.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Records due in the first part of each step are checked but not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: std::time::Duration,
    /// How long to wait after a step's last send for its outcomes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: std::time::Duration,
    /// Model named in the requests.
    #[arg(long)]
    model: String,
    /// Payload family.
    #[arg(long, value_enum, default_value = "text")]
    payload: PayloadArg,
    /// Share of long sentences among text requests.
    #[arg(long, default_value_t = 0.2)]
    long_share: f64,
    /// Feature count of tabular requests.
    #[arg(long, default_value_t = 8)]
    width: usize,
    /// Share of hostile records (each expects a dead letter).
    #[arg(long, default_value_t = 0.01)]
    hostile_share: f64,
    /// Share of records sent to the priority topic.
    #[arg(long, default_value_t = 0.05)]
    priority_share: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A step whose p99 passes this is not sustained.
    #[arg(long, default_value_t = 250.0)]
    p99_bound_ms: f64,
    /// A step whose output rate falls below this share of the offered rate is not sustained.
    #[arg(long, default_value_t = 0.95)]
    min_achieved: f64,
    /// Unsustained steps in a row before the sweep stops.
    #[arg(long, default_value_t = 1)]
    patience: usize,
    /// After the rate grid, bisect between the highest sustained and the lowest failed rate
    /// until they are within this fraction (e.g. 0.05); 0 skips bisection.
    #[arg(long, default_value_t = 0.0)]
    bisect_to: f64,
    /// Lengthen a step until at least this many records are due after its warm-up (slow
    /// systems get long enough steps for a stable p99).
    #[arg(long, default_value_t = 0)]
    min_measured: u64,
    /// Shell command run (`sh -c`) before every step, e.g. to start a fresh broker and system;
    /// it gets the step's rate and index in SLUICE_LOADGEN_RATE and SLUICE_LOADGEN_STEP and must
    /// exit 0.
    #[arg(long)]
    before_step: Option<String>,
    /// Which repeat of the same sweep this is (1, 2, ...), for the report.
    #[arg(long)]
    repeat: Option<u32>,
    /// Skip the extra step at half of the highest sustained rate.
    #[arg(long)]
    no_half_step: bool,
    /// Name of the system under test, for the report.
    #[arg(long)]
    system: String,
    /// How the system under test was configured, for the report.
    #[arg(long, default_value = "")]
    system_notes: String,
    /// The broker, in words, for the report.
    #[arg(long, default_value = "")]
    broker: String,
    /// Sluice commit for the report [default: $SLUICE_BENCH_COMMIT, else `git rev-parse --short HEAD`].
    #[arg(long)]
    commit: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PayloadArg {
    Text,
    Tabular,
}

fn git_commit() -> String {
    if let Ok(c) = std::env::var("SLUICE_BENCH_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs one `sluice loadgen` subcommand.
pub fn run(command: LoadgenCommand) -> anyhow::Result<ExitCode> {
    match command {
        LoadgenCommand::Run(a) => {
            crate::telemetry::logging::init(false, "warn");
            let stop = stop_flag()?;
            let rates =
                sweep::RatePlan::parse(&a.rates).map_err(|e| anyhow::anyhow!("--rates: {e}"))?;
            for (name, v) in [
                ("--long-share", a.long_share),
                ("--hostile-share", a.hostile_share),
                ("--priority-share", a.priority_share),
            ] {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&v),
                    "{name} must be between 0 and 1, got {v}"
                );
            }
            anyhow::ensure!(
                a.warmup < a.duration,
                "--warmup ({:?}) must be shorter than --duration ({:?})",
                a.warmup,
                a.duration
            );
            let payload = match a.payload {
                PayloadArg::Text => workload::Payload::Text { long_share: a.long_share },
                PayloadArg::Tabular => workload::Payload::Tabular { width: a.width.max(1) },
            };
            let wl = workload::Workload {
                model: a.model.clone(),
                payload,
                hostile_share: a.hostile_share,
                priority_share: a.priority_share,
                seed: a.seed,
            };
            let target = step::Target {
                bootstrap: a.bootstrap.clone(),
                input_topic: a.input_topic.clone(),
                priority_topic: a.priority_topic.clone(),
                output_topic: a.output_topic.clone(),
                dlq_topic: a.dlq_topic.clone(),
            };
            let criteria = sweep::Criteria {
                p99_bound_ms: a.p99_bound_ms,
                min_achieved_ratio: a.min_achieved,
            };
            anyhow::ensure!(
                (0.0..1.0).contains(&a.bisect_to),
                "--bisect-to must be at least 0 and below 1, got {}",
                a.bisect_to
            );
            let spec = sweep::SweepSpec {
                rates,
                criteria,
                patience: a.patience,
                bisect_to: (a.bisect_to > 0.0).then_some(a.bisect_to),
                min_measured: a.min_measured,
                half_step: !a.no_half_step,
                step: step::StepSpec {
                    rate: 0.0,
                    arrival: a.arrival,
                    duration: a.duration,
                    warmup: a.warmup,
                    drain_timeout: a.drain_timeout,
                    workload: wl.clone(),
                },
            };
            eprintln!(
                "loadgen: {} against {} ({}), model {}",
                a.system, a.bootstrap, a.rates, a.model
            );
            let load_before = report::load_avg_1m();
            let mut stepper = sweep::BrokerStepper {
                target: &target,
                stop: &stop,
                before_step: a.before_step.as_deref(),
                index: 0,
            };
            let outcome = sweep::run_sweep(&mut stepper, &spec, &stop, |s| {
                eprintln!(
                    "  {:<6} {:>8.0}/s offered  {:>8.0}/s out  p50 {:>8.1} ms  p99 {:>8.1} ms  p99.9 {:>8.1} ms  max {:>8.1} ms  batch {:>5}  dlq {:>5}  missing {}  -> {}",
                    s.phase,
                    s.offered_rps,
                    s.achieved_rps,
                    s.latency.p50_ms,
                    s.latency.p99_ms,
                    s.latency.p999_ms,
                    s.latency.max_ms,
                    s.mean_batch.map_or("-".into(), |b| format!("{b:.1}")),
                    s.dead_letters,
                    s.missing,
                    s.verdict
                );
            })?;
            match outcome.max_sustained_rps {
                Some(r) => eprintln!("loadgen: {} sustained up to {r:.0}/s", a.system),
                None => eprintln!("loadgen: {} sustained none of the rates", a.system),
            }
            let rep = report::RunReport {
                system: a.system.clone(),
                system_notes: a.system_notes.clone(),
                repeat: a.repeat,
                broker: a.broker.clone(),
                target: Some(target),
                machine: report::Machine::detect(),
                commit: a.commit.clone().unwrap_or_else(git_commit),
                date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                command: std::env::args()
                    .map(|a| {
                        if a.contains([' ', '\'', '"', '(']) {
                            format!("'{}'", a.replace('\'', "'\\''"))
                        } else {
                            a
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                workload: Some(wl),
                arrival: Some(a.arrival),
                criteria: Some(criteria),
                load_avg_1m: load_before.into_iter().chain(report::load_avg_1m()).collect(),
                sweep: outcome,
            };
            if let Some(out) = &a.out {
                if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                std::fs::write(out, serde_json::to_vec_pretty(&rep)?)
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!("loadgen: report written to {}", out.display());
            } else {
                println!("{}", report::steps_table(&rep));
            }
            Ok(ExitCode::SUCCESS)
        }
        LoadgenCommand::Passthrough { config } => {
            let cfg = Config::load(config.as_deref())?;
            crate::telemetry::logging::init(cfg.log.format == LogFormat::Json, &cfg.log.level);
            let _profile = crate::telemetry::profile::from_env();
            let stop = stop_flag()?;
            let r = passthrough::run(&cfg, &stop, || {
                println!("ready");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            })?;
            eprintln!("passthrough: forwarded {}, commits {}", r.forwarded, r.commits);
            Ok(ExitCode::SUCCESS)
        }
        LoadgenCommand::Report { runs, out_dir, name, title, spectrum_rate } => {
            let mut reports = Vec::new();
            for p in &runs {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                let r: report::RunReport = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a loadgen run report", p.display()))?;
                reports.push(r);
            }
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let latency_svg = format!("{name}-latency.svg");
            let spectrum_svg = format!("{name}-spectrum.svg");
            plot::latency_vs_rate(
                &reports,
                &format!("{title}: latency vs offered rate"),
                &out_dir.join(&latency_svg),
            )?;
            let picks: Vec<Option<&step::StepResult>> = reports
                .iter()
                .map(|r| match spectrum_rate {
                    Some(rate) => {
                        r.all_steps().into_iter().filter(|s| s.latency.count > 0).min_by(|a, b| {
                            (a.offered_rps - rate).abs().total_cmp(&(b.offered_rps - rate).abs())
                        })
                    }
                    None => r.sweep.half_step.as_ref(),
                })
                .collect();
            plot::spectrum(
                &reports,
                &picks,
                &format!("{title}: latency percentile spectrum"),
                &out_dir.join(&spectrum_svg),
            )?;
            let md = report::markdown(
                &title,
                &reports,
                &[
                    ("latency against offered rate", &latency_svg),
                    ("percentile spectrum", &spectrum_svg),
                ],
            );
            let md_path = out_dir.join(format!("{name}.md"));
            std::fs::write(&md_path, md)
                .with_context(|| format!("writing {}", md_path.display()))?;
            println!("{}", md_path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A flag set by SIGTERM or SIGINT.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}
