//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::batch::{self, BatchJob};
use sluice::config::{Config, LogFormat};
use sluice::engine::EngineSettings;
use sluice::ingest::Limits;
use sluice::models::cache::CacheSettings;
use sluice::models::{ModelCache, Repository};

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

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(path.map(|p| p.as_path()))?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config { command: ConfigCommand::Check { file } } => match sluice::config::check_file(&file) {
            Ok(yaml) => {
                print!("{yaml}");
                eprintln!("{}: OK", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::from(2))
            }
        },
        Command::Models { command: ModelsCommand::List { models } } => {
            let repo = Repository::open(&models)?;
            for m in repo.list()? {
                println!("{}\tversions {}\tserving {}", m.name, m.versions.join(","), m.serving.as_deref().unwrap_or("-"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command: ModelsCommand::GenDemo { dir } } => {
            sluice::testkit::write_demo_repository(&dir)?;
            println!("demo models written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Batch { models, model, input, output, dlq, config, no_progress, json } => {
            let cfg = load_config(config.as_ref())?;
            sluice::telemetry::logging::init(cfg.log.format == LogFormat::Json, &cfg.log.level);
            let repo = Repository::open(&models).with_context(|| format!("model repository {}", models.display()))?;
            let cache = Arc::new(ModelCache::new(repo, candle_core::Device::Cpu, CacheSettings::from_config(&cfg)));
            let dlq = dlq.unwrap_or_else(|| batch::default_dlq_path(&output));
            let job = BatchJob {
                cache,
                model,
                input,
                output: output.clone(),
                dlq: dlq.clone(),
                engine: EngineSettings::from_config(&cfg),
                limits: Limits::from_config(&cfg),
                progress: !no_progress,
            };
            let summary = batch::run(job)?;
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
