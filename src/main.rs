//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::config::{Config, LogFormat};
use sluice::control::{ControlOptions, ControlPlane};
use sluice::jsonl::{self, BatchJob};
use sluice::models::{ModelCache, Repository};
use sluice::settings::Settings;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Kafka streams in, model predictions out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a JSONL file through the engine: one result or dead letter per line.
    Batch {
        /// Model repository directory.
        #[arg(long, default_value = "models")]
        models: PathBuf,
        /// Model for lines without a "model" field.
        #[arg(long)]
        model: String,
        /// Input JSONL file (one request per line).
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL file (one result per line).
        #[arg(long)]
        output: PathBuf,
        /// Dead-letter JSONL file [default: OUTPUT.dlq.jsonl].
        #[arg(long)]
        dlq: Option<PathBuf>,
        /// Configuration file (batching, lanes and limits are read from it).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Never show the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the streaming pipeline until SIGTERM/SIGINT, then drain and exit.
    Serve {
        /// Configuration file (every key can also come from SLUICE_* variables).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the whole pipeline with no setup: in-process broker, bundled model, built-in load.
    Demo {
        /// Requests per second from the built-in producer (0: only outside clients).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Model repository (default: models/ if MiniLM was fetched, else generated demo models).
        #[arg(long)]
        models: Option<PathBuf>,
        /// Share of deliberately bad records, in percent.
        #[arg(long, default_value_t = 1.0)]
        bad_percent: f64,
    },
    /// Send chosen dead letters back to the topic their request came from, after a fix.
    ///
    /// Reads the dead-letter topic up to the end offsets it sees at the start (never its own
    /// new dead letters), outside Sluice's consumer group. Each match is sent as the original
    /// record with its sluice-replay-count header one higher; dead letters already replayed
    /// --max-replays times are skipped and listed. A rerun sends the same selection again.
    Replay {
        /// Configuration file (brokers, security, topics; every key can also come from
        /// SLUICE_* variables).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Error classes to replay, comma-separated (parse, validation, unknown_model,
        /// too_large, expired, inference) [default: all].
        #[arg(long, value_delimiter = ',')]
        class: Vec<String>,
        /// Only dead letters written at or after this time (RFC 3339, e.g.
        /// 2026-12-01T14:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only dead letters written before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Only this partition of the dead-letter topic.
        #[arg(long)]
        partition: Option<i32>,
        /// First dead-letter offset to read (needs --partition).
        #[arg(long)]
        from_offset: Option<i64>,
        /// Last dead-letter offset to read, inclusive (needs --partition).
        #[arg(long)]
        to_offset: Option<i64>,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Skip dead letters already replayed this often [default:
        /// streaming.inference.processing.maxReplays].
        #[arg(long)]
        max_replays: Option<u32>,
        /// Give up when the broker does not answer for this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Model repository tools.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// The open-loop benchmark harness: load, rate sweeps, the passthrough baseline, reports.
    #[cfg(feature = "loadgen")]
    Loadgen {
        #[command(subcommand)]
        command: sluice::loadgen::cli::LoadgenCommand,
    },
    /// The open-loop benchmark harness (not in this build: rebuild with --features loadgen).
    #[cfg(not(feature = "loadgen"))]
    #[command(hide = true, disable_help_flag = true)]
    Loadgen {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with SLUICE_* overrides) and print the effective configuration.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the models of a repository.
    List {
        #[arg(long, default_value = "models")]
        models: PathBuf,
    },
    /// Write the bundled demo models (small, generated with fixed seeds) into a repository.
    GenDemo { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An RFC 3339 time as epoch milliseconds.
fn epoch_ms(text: &str, flag: &str) -> anyhow::Result<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim()).with_context(|| {
        format!("{flag} {text:?}: expected an RFC 3339 time such as 2026-12-01T14:00:00Z")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .with_context(|| format!("{flag} {text:?}: before 1970"))?
        .as_millis();
    i64::try_from(ms).with_context(|| format!("{flag} {text:?}: too far in the future"))
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(path.map(|p| p.as_path()))?)
}

/// A flag set by SIGTERM or SIGINT. A second signal while the first one's stop is under way
/// exits at once (status 1).
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

/// Exits the process if the stop that a signal started is not over `limit` later: the drain
/// itself ends by `processing.drainTimeout`, so this only fires when something outside it
/// hangs (a client that does not close). Records not committed by then are processed again
/// after the restart.
fn exit_watchdog(limit: std::time::Duration) {
    let spawned = std::thread::Builder::new().name("sluice-exit-watchdog".into()).spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            waited_s = limit.as_secs(),
            "stop did not finish in time after the signal; exiting now (uncommitted records are processed again after the restart)"
        );
        std::process::exit(1);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the exit watchdog");
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = load_config(config.as_ref())?;
            sluice::telemetry::logging::init(cfg.log.format == LogFormat::Json, &cfg.log.level);
            let _profile = sluice::telemetry::profile::from_env();
            let stop = stop_flag()?;
            let repo_dir = &cfg.streaming.inference.model.repository;
            let repo = Repository::open(repo_dir)
                .with_context(|| format!("model repository {}", repo_dir.display()))?
                .with_state_dir(cfg.streaming.inference.model.state_dir());
            if let Some(dir) = cfg.streaming.inference.model.state_dir() {
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("streaming.inference.model.stateDirectory {}", dir.display())
                })?;
            }
            let cache = Arc::new(ModelCache::new(repo, Settings::from_config(&cfg).cache));
            // The control plane owns the pipeline's lifecycle: it starts it now (unless
            // streaming.inference.enabled is false) and reports a failed start or a dead
            // thread as state `failed` instead of exiting, so an operator can see why.
            let opts = ControlOptions {
                autostart: cfg.streaming.inference.enabled,
                ..ControlOptions::default()
            };
            let control = ControlPlane::start(cfg.clone(), cache, opts)?;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            tracing::info!("signal received");
            // The drain deadline, then the final commit and closing the clients (each waited
            // for a few seconds at most).
            exit_watchdog(
                cfg.streaming.inference.processing.drain_timeout()
                    + std::time::Duration::from_secs(20),
            );
            if let Some(report) = control.shutdown() {
                eprintln!(
                    "stopped: consumed {}, results {}, dead letters {}",
                    report.consumed, report.results, report.dead_letters
                );
                if !report.hung.is_empty() {
                    eprintln!(
                        "left behind at the drain deadline: {} (their records are processed again after the restart)",
                        report.hung.join(", ")
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { rate, seconds, models, bad_percent } => {
            sluice::telemetry::logging::init(false, "warn");
            let stop = stop_flag()?;
            let opt = sluice::demo::DemoOptions {
                rate,
                duration: seconds.map(std::time::Duration::from_secs),
                models,
                bad_share: (bad_percent / 100.0).clamp(0.0, 1.0),
            };
            sluice::demo::run(opt, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            config,
            class,
            since,
            until,
            partition,
            from_offset,
            to_offset,
            dry_run,
            max_replays,
            timeout_secs,
        } => {
            let cfg = load_config(config.as_ref())?;
            sluice::telemetry::logging::init(cfg.log.format == LogFormat::Json, &cfg.log.level);
            let opts = sluice::kafka::ReplayOptions {
                classes: class.into_iter().filter(|c| !c.trim().is_empty()).collect(),
                since_ms: since.as_deref().map(|t| epoch_ms(t, "--since")).transpose()?,
                until_ms: until.as_deref().map(|t| epoch_ms(t, "--until")).transpose()?,
                partition,
                from_offset,
                to_offset,
                dry_run,
                max_replays: max_replays.unwrap_or(cfg.streaming.inference.processing.max_replays),
                timeout: std::time::Duration::from_secs(timeout_secs.max(1)),
            };
            let summary = sluice::kafka::replay(&cfg, &opts)?;
            print!("{summary}");
            Ok(if summary.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Config { command: ConfigCommand::Check { file } } => {
            match sluice::config::check_file(&file) {
                Ok(yaml) => {
                    print!("{yaml}");
                    eprintln!("{}: OK", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Models { command: ModelsCommand::List { models } } => {
            let repo = Repository::open(&models)?;
            for m in repo.list()? {
                println!(
                    "{}\tversions {}\tserving {}",
                    m.name,
                    m.versions.join(","),
                    m.serving.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command: ModelsCommand::GenDemo { dir } } => {
            sluice::demo::models::write_demo_repository(&dir)?;
            println!("demo models written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "loadgen")]
        Command::Loadgen { command } => sluice::loadgen::cli::run(command),
        #[cfg(not(feature = "loadgen"))]
        Command::Loadgen { .. } => {
            anyhow::bail!("built without the loadgen feature; rebuild with --features loadgen")
        }
        Command::Batch { models, model, input, output, dlq, config, no_progress, json } => {
            let cfg = load_config(config.as_ref())?;
            sluice::telemetry::logging::init(cfg.log.format == LogFormat::Json, &cfg.log.level);
            let repo = Repository::open(&models)
                .with_context(|| format!("model repository {}", models.display()))?;
            let settings = Settings::from_config(&cfg);
            let cache = Arc::new(ModelCache::new(repo, settings.cache));
            let dlq = dlq.unwrap_or_else(|| jsonl::default_dlq_path(&output));
            let job = BatchJob {
                cache,
                model,
                input,
                output: output.clone(),
                dlq: dlq.clone(),
                engine: settings.engine,
                limits: settings.limits,
                progress: !no_progress,
            };
            let summary = jsonl::run(job)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
                println!("results: {}\ndead letters: {}", output.display(), dlq.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
