//! Loading: defaults, the YAML file, the `SLUICE_*` environment, then validation.

use std::path::Path;

use super::error::ConfigError;
use super::overlay::{self, env_var_name};
use super::types::{is_secret_property, Config, Secret, REDACTED};
use super::validate;

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

    /// A copy with secrets (`control.token`, the `kafka.security` passwords and secrets, and
    /// [secret-looking](super::is_secret_property) `kafka.properties` values) replaced by
    /// `<redacted>`, for display.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.control.token.is_some() {
            c.control.token = Some(REDACTED.to_owned());
        }
        let sec = &mut c.kafka.security;
        for secret in [&mut sec.ssl.key_password, &mut sec.sasl.password] {
            if secret.is_some() {
                *secret = Some(Secret::new(REDACTED));
            }
        }
        for (k, v) in c.kafka.properties.0.iter_mut() {
            if is_secret_property(k) {
                *v = REDACTED.to_owned();
            }
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
    use crate::config::*;

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
