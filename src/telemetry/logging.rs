//! `tracing` set-up: text or JSON lines on stderr, filter from `SLUICE_LOG` or the config.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` selects JSON lines; `level` is an EnvFilter
/// directive, overridden by the `SLUICE_LOG` environment variable.
pub fn init(json: bool, level: &str) {
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
