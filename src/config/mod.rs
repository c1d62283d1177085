//! Configuration: the `sluice.yaml` data model, environment overrides and validation.
//!
//! Sources, lowest precedence first:
//!
//! 1. the built-in defaults ([`Config::default`], documented key by key in
//!    `config/sluice.example.yaml`);
//! 2. the YAML file (absent keys keep their defaults; an empty file is all defaults);
//! 3. environment variables: every key can be overridden by `SLUICE_` + its path with dots
//!    turned into `_` and camelCase split into words, upper-cased ([`env_var_name`]):
//!    `streaming.inference.trigger.intervalMs` → `SLUICE_STREAMING_INFERENCE_TRIGGER_INTERVAL_MS`.
//!    Values are read like YAML scalars of the key's type; lists take `[0,1]` or `0,1`; an empty
//!    value unsets an optional key such as `control.token`. A `SLUICE_*` variable that matches no
//!    key is an error, except the non-configuration variables of [`is_non_config_env_var`].
//!
//! Unknown keys, type errors and out-of-range values are errors that name the key's YAML path
//! (and the environment variable, when one set it).

mod overlay;
mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use overlay::{env_var_name, is_non_config_env_var, ENV_PREFIX};
pub use types::*;
pub use validate::{topic_name_problem, MAX_RECORD_BYTES, MAX_TOPIC_NAME_LEN, MIN_RECORD_BYTES};

/// Why a configuration could not be loaded. Every variant about a key names its YAML path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read (e.g. it does not exist).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The document is not well-formed YAML.
    #[error("{origin}: invalid YAML: {message}")]
    Syntax {
        /// The file path, or `<string>`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key that the configuration does not have.
    #[error("unknown key '{path}'{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    UnknownKey {
        /// Full dotted YAML path of the unknown key.
        path: String,
        /// The closest existing sibling key, if any is close.
        suggestion: Option<String>,
    },
    /// A `SLUICE_*` environment variable that matches no configuration key.
    #[error("unknown environment variable {name}: it matches no configuration key{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownEnvVar {
        /// The variable.
        name: String,
        /// The closest configuration variable, if any is close.
        suggestion: Option<String>,
    },
    /// A key whose value has the wrong type or is out of range.
    #[error("{}{path}{}: {message}", env_var.as_ref().map(|v| format!("{v} (")).unwrap_or_default(), if env_var.is_some() { ")" } else { "" })]
    Invalid {
        /// Dotted YAML path of the key (`(root)` for the document itself).
        path: String,
        /// The environment variable that set the value, if one did.
        env_var: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(
        path: impl Into<String>,
        env_var: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid { path: path.into(), env_var, message: message.into() }
    }

    /// The dotted YAML path of the key this error is about, if it is about one.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { path, .. } | Self::Invalid { path, .. } => Some(path),
            Self::Read { .. } | Self::Syntax { .. } | Self::UnknownEnvVar { .. } => None,
        }
    }
}

impl Config {
    /// Loads the configuration: the YAML file at `path` (none: all defaults), then the `SLUICE_*`
    /// variables of the process environment, then validation.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars = process_env();
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                Self::build(&text, &p.display().to_string(), vars)
            }
            None => Self::build("", "<defaults>", vars),
        }
    }

    /// Parses a YAML document with an injected environment: `env(name)` is asked for each
    /// configuration variable (`SLUICE_KAFKA_BOOTSTRAP_SERVERS`, ...). Cannot detect unknown
    /// `SLUICE_*` variables; use [`from_yaml_str_with_vars`](Self::from_yaml_str_with_vars) for
    /// that. `&|_| None` means no environment.
    pub fn from_yaml_str(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let vars = Self::env_keys()
            .into_iter()
            .filter_map(|(name, _)| env(&name).map(|v| (name, v)))
            .collect();
        Self::build(yaml, "<string>", vars)
    }

    /// Parses a YAML document with an explicit environment (all variables, as from
    /// `std::env::vars()`): `SLUICE_*` ones override keys, and one that matches no key (and is
    /// not a known non-configuration variable) is an error.
    pub fn from_yaml_str_with_vars<I, K, V>(yaml: &str, vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::build(yaml, "<string>", vars)
    }

    fn build(yaml: &str, origin: &str, vars: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let (config, origins) = overlay::build(yaml, origin, vars)?;
        validate::check(&config).map_err(|(path, message)| {
            let env_var = origins.get(&path).cloned();
            ConfigError::Invalid { path, env_var, message }
        })?;
        Ok(config)
    }

    /// Checks the ranges and cross-field rules (for configurations built in code; the loaders
    /// already do this).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check(self).map_err(|(path, message)| ConfigError::invalid(path, None, message))
    }

    /// Every configuration key as `(environment variable, dotted YAML path)`, in document order.
    pub fn env_keys() -> Vec<(String, String)> {
        overlay::leaves(&overlay::defaults_value())
            .iter()
            .map(|l| {
                let path = l.dotted();
                (env_var_name(&path), path)
            })
            .collect()
    }

    /// The configuration as YAML; loading it back gives an equal `Config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("the configuration serializes to YAML")
    }

    /// A copy with secrets (`control.token`) replaced by `<redacted>`, for display.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.control.token.is_some() {
            c.control.token = Some(REDACTED.to_owned());
        }
        c
    }
}

/// `sluice config check FILE`: loads `path` (with the process environment's overrides),
/// validates it and returns the effective configuration as YAML, with `control.token` redacted.
pub fn check_file(path: &Path) -> Result<String, ConfigError> {
    Config::load(Some(path)).map(|c| c.redacted().to_yaml())
}

fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, &|_| None)
    }

    #[test]
    fn empty_and_comment_only_documents_are_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n").unwrap(), Config::default());
        assert_eq!(parse("kafka:\n").unwrap(), Config::default());
    }

    #[test]
    fn accessors() {
        let c = Config::default();
        let inf = &c.streaming.inference;
        assert_eq!(inf.trigger_interval(), std::time::Duration::from_millis(500));
        assert_eq!(inf.delay_threshold(), std::time::Duration::from_secs(2));
        assert_eq!(inf.batch_timeout(), std::time::Duration::from_secs(10));
        assert_eq!(inf.ttl(), std::time::Duration::from_secs(30 * 60));
        assert_eq!(inf.reporting_interval(), std::time::Duration::from_secs(30));
        assert_eq!(c.control.listen.to_string(), "127.0.0.1:8086");
    }

    #[test]
    fn yaml_shape_of_defaults() {
        let y = Config::default().to_yaml();
        for needle in [
            "intervalMs: 500",
            "delayThreshold: 2s",
            "policy: process",
            "guarantee: at_least_once",
            "timeout: 10",
            "listen: 127.0.0.1:8086",
            "token: null",
            "devices: []",
            "repository: ./models",
            "format: text",
        ] {
            assert!(y.contains(needle), "{needle} missing from\n{y}");
        }
    }

    #[test]
    fn merge_keys_are_applied() {
        let c =
            parse("kafka:\n  topics:\n    streaming:\n      <<: {input: a, output: b}\n").unwrap();
        assert_eq!(c.kafka.topics.streaming.input, "a");
        assert_eq!(c.kafka.topics.streaming.output, "b");
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let e = parse("kafka: [unclosed").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert!(e.to_string().starts_with("<string>: invalid YAML"), "{e}");
    }

    #[test]
    fn debug_hides_the_token() {
        let mut c = Config::default();
        c.control.token = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redacted().control.token.as_deref(), Some(REDACTED));
    }

    #[test]
    fn key_path_accessor() {
        let e = parse("log: {level: ''}").unwrap_err();
        assert_eq!(e.key_path(), Some("log.level"));
    }
}
