//! Building a [`Config`] from a YAML document plus environment variables.
//!
//! The shape of the configuration is taken from `Config::default()` serialized to a
//! [`serde_yaml::Value`]: non-empty mappings are sections, everything else (scalars, sequences,
//! `null`s) is a leaf. The document is walked against that shape (so an unknown key is reported
//! with its full path), every leaf the document or the environment sets is checked on its own
//! (so a type error names its key), and the checked leaves are merged over the defaults before
//! the final deserialization.

use std::collections::HashMap;

use serde_yaml::Value;

use super::error::ConfigError;
use super::types::Config;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SLUICE_";

/// `SLUICE_*` variables that are not configuration keys (used by the CLI, tests and benches).
const NON_CONFIG_EXACT: &[&str] =
    &["SLUICE_CONFIG", "SLUICE_LOG", "SLUICE_CACHE", "SLUICE_PROFILE_SVG"];
const NON_CONFIG_PREFIXES: &[&str] =
    &["SLUICE_TEST_", "SLUICE_BENCH_", "SLUICE_BROKER", "SLUICE_LOADGEN_"];

/// Whether `name` is a `SLUICE_*` variable that is deliberately not a configuration key
/// (`SLUICE_CONFIG`, `SLUICE_LOG`, `SLUICE_CACHE`, `SLUICE_PROFILE_SVG`, `SLUICE_TEST_*`,
/// `SLUICE_BENCH_*`, `SLUICE_BROKER*`, `SLUICE_LOADGEN_*`). Such variables are ignored by the
/// override mechanism.
pub fn is_non_config_env_var(name: &str) -> bool {
    NON_CONFIG_EXACT.contains(&name) || NON_CONFIG_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The environment variable that overrides the key at a dotted YAML path:
/// `streaming.inference.trigger.intervalMs` → `SLUICE_STREAMING_INFERENCE_TRIGGER_INTERVAL_MS`.
pub fn env_var_name(path: &str) -> String {
    let mut out = String::from(ENV_PREFIX);
    for (i, segment) in path.split('.').enumerate() {
        if i > 0 {
            out.push('_');
        }
        let mut prev: Option<char> = None;
        for c in segment.chars() {
            if c.is_ascii_uppercase()
                && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
            {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
            prev = Some(c);
        }
    }
    out
}

/// One configuration leaf: its path and default value.
pub(crate) struct Leaf {
    pub path: Vec<String>,
    pub default: Value,
}

impl Leaf {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// The defaults as a YAML value.
pub(crate) fn defaults_value() -> Value {
    serde_yaml::to_value(Config::default()).expect("the default configuration serializes")
}

/// All leaves of `shape`, in document order.
pub(crate) fn leaves(shape: &Value) -> Vec<Leaf> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Leaf>) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(key_string(k).expect("default keys are strings"));
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => out.push(Leaf { path: path.clone(), default: v.clone() }),
        }
    }
    let mut out = Vec::new();
    walk(shape, &mut Vec::new(), &mut out);
    out
}

fn key_string(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Dotted path for messages; the empty path is the document root.
pub(crate) fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        "(root)".to_owned()
    } else {
        path.join(".")
    }
}

/// A short description of a YAML value for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("float `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {:?}", truncate(s, 80)),
        Value::Sequence(_) => "a sequence".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The closest of `candidates` to `given` when it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = given.to_ascii_lowercase();
    // Very short keys only get case-insensitive matches (`gpu` is not a typo of `cpu`).
    let len = given.chars().count();
    let limit = if len <= 3 { 0 } else { (len / 3).max(1) };
    candidates
        .into_iter()
        .filter_map(|c| {
            let d = if c.eq_ignore_ascii_case(given) {
                0
            } else {
                edit_distance(&lower, &c.to_ascii_lowercase())
            };
            (d <= limit).then_some((d, c))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c.to_owned())
}

/// Edit distance counting insertions, deletions, substitutions and adjacent transpositions
/// (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j - 1] + cost)
                .min(d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// Walks `given` against `shape`, collecting the leaves it sets; unknown keys are errors.
fn collect_document_leaves(
    shape: &Value,
    given: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Value)>,
) -> Result<(), ConfigError> {
    let section = match shape {
        Value::Mapping(m) if !m.is_empty() => m,
        _ => {
            out.push((path.clone(), given.clone()));
            return Ok(());
        }
    };
    let given = match given {
        Value::Mapping(m) => m,
        // `section:` with nothing under it: keep the defaults.
        Value::Null => return Ok(()),
        other => {
            return Err(ConfigError::invalid(
                display_path(path),
                None,
                format!("expected a mapping, got {}", describe(other)),
            ))
        }
    };
    for (k, v) in given {
        let Some(key) = key_string(k) else {
            return Err(ConfigError::invalid(
                display_path(path),
                None,
                format!("keys must be strings, got {}", describe(k)),
            ));
        };
        match section.get(key.as_str()) {
            Some(child_shape) => {
                path.push(key);
                collect_document_leaves(child_shape, v, path, out)?;
                path.pop();
            }
            None => {
                let suggestion = suggest(&key, section.keys().filter_map(Value::as_str));
                let mut full = path.clone();
                full.push(key);
                return Err(ConfigError::UnknownKey { path: full.join("."), suggestion });
            }
        }
    }
    Ok(())
}

fn set_at(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *root = value;
        return;
    };
    let mut cur = root;
    for seg in parents {
        cur = cur
            .as_mapping_mut()
            .and_then(|m| m.get_mut(seg.as_str()))
            .expect("leaf paths come from the defaults");
    }
    cur.as_mapping_mut()
        .expect("leaf paths come from the defaults")
        .insert(Value::String(last.clone()), value);
}

fn is_integer(v: &Value) -> bool {
    matches!(v, Value::Number(n) if !n.is_f64())
}

/// Candidate values for a leaf set in the YAML document, or a message on a kind mismatch.
fn document_candidates(default: &Value, given: &Value) -> Result<Vec<Value>, String> {
    let mismatch = |what: &str| Err(format!("expected {what}, got {}", describe(given)));
    match default {
        Value::Bool(_) => match given {
            Value::Bool(_) => Ok(vec![given.clone()]),
            _ => mismatch("a boolean (true or false)"),
        },
        Value::Number(n) if !n.is_f64() => {
            if is_integer(given) {
                Ok(vec![given.clone()])
            } else {
                mismatch("an integer")
            }
        }
        Value::Number(_) => match given {
            Value::Number(_) => Ok(vec![given.clone()]),
            _ => mismatch("a number"),
        },
        Value::String(_) => match given {
            Value::String(_) => Ok(vec![given.clone()]),
            // `group: 42` means the string "42".
            Value::Number(n) => Ok(vec![Value::String(n.to_string())]),
            Value::Bool(b) => Ok(vec![Value::String(b.to_string())]),
            _ => mismatch("a string"),
        },
        Value::Sequence(_) => match given {
            Value::Sequence(_) => Ok(vec![given.clone()]),
            _ => mismatch("a sequence"),
        },
        Value::Mapping(_) => match given {
            Value::Mapping(_) | Value::Null => Ok(vec![given.clone()]),
            _ => mismatch("a mapping"),
        },
        // A null default (an optional value): whatever the document says, with a string
        // reading of scalars as the fallback (`token: 12345` is the string "12345").
        Value::Null | Value::Tagged(_) => {
            let mut out = vec![given.clone()];
            match given {
                Value::Number(n) => out.push(Value::String(n.to_string())),
                Value::Bool(b) => out.push(Value::String(b.to_string())),
                _ => {}
            }
            Ok(out)
        }
    }
}

/// Candidate values for a leaf set by an environment variable, or a message.
fn env_candidates(default: &Value, raw: &str) -> Result<Vec<Value>, String> {
    let invalid = |what: &str| Err(format!("invalid value {:?}: expected {what}", raw));
    let t = raw.trim();
    match default {
        Value::Bool(_) => match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(vec![Value::Bool(true)]),
            "false" | "no" | "off" | "0" => Ok(vec![Value::Bool(false)]),
            _ => invalid("a boolean (true or false)"),
        },
        Value::Number(n) if !n.is_f64() => {
            if let Ok(u) = t.parse::<u64>() {
                Ok(vec![Value::from(u)])
            } else if let Ok(i) = t.parse::<i64>() {
                Ok(vec![Value::from(i)])
            } else {
                invalid("an integer")
            }
        }
        Value::Number(_) => match t.parse::<f64>() {
            Ok(f) => Ok(vec![Value::from(f)]),
            Err(_) => invalid("a number"),
        },
        Value::String(_) => Ok(vec![Value::String(raw.to_owned())]),
        Value::Sequence(_) => {
            if t.is_empty() {
                return Ok(vec![Value::Sequence(Vec::new())]);
            }
            match serde_yaml::from_str::<Value>(t) {
                Ok(v @ Value::Sequence(_)) => Ok(vec![v]),
                Ok(Value::Null) => Ok(vec![Value::Sequence(Vec::new())]),
                _ if t.starts_with('[') => invalid("a sequence such as [0, 1]"),
                // `0,1` or `0`: a comma-separated list of scalars.
                _ => Ok(vec![Value::Sequence(t.split(',').map(|s| scalar(s.trim())).collect())]),
            }
        }
        Value::Mapping(_) => match serde_yaml::from_str::<Value>(t) {
            Ok(v @ Value::Mapping(_)) => Ok(vec![v]),
            _ => invalid("a mapping such as {a: 1}"),
        },
        // A null default (an optional value): empty or `null` unsets it; otherwise the YAML
        // reading of the value, with the verbatim string as the fallback.
        Value::Null | Value::Tagged(_) => {
            if t.is_empty() {
                return Ok(vec![Value::Null]);
            }
            let mut out = Vec::new();
            if let Ok(v) = serde_yaml::from_str::<Value>(t) {
                if !matches!(v, Value::String(_)) {
                    out.push(v);
                }
            }
            out.push(Value::String(raw.to_owned()));
            Ok(out)
        }
    }
}

/// Leaves holding secrets: set through the environment, they may not be empty.
const SECRET_LEAVES: &[&str] =
    &["control.token", "kafka.security.ssl.keyPassword", "kafka.security.sasl.password"];

/// A YAML scalar read of `s`, or the string itself.
fn scalar(s: &str) -> Value {
    match serde_yaml::from_str::<Value>(s) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null | Value::String(_))) => v,
        _ => Value::String(s.to_owned()),
    }
}

/// The first candidate that deserializes when placed alone over the defaults.
fn check_leaf(defaults: &Value, path: &[String], candidates: Vec<Value>) -> Result<Value, String> {
    let mut first_err = None;
    for cand in candidates {
        let mut probe = defaults.clone();
        set_at(&mut probe, path, cand.clone());
        match serde_yaml::from_value::<Config>(probe) {
            Ok(_) => return Ok(cand),
            Err(e) => {
                first_err.get_or_insert_with(|| plain_type_names(&e.to_string()));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "no value".to_owned()))
}

/// Serde's messages name Rust types (`expected usize`); say what they mean instead.
fn plain_type_names(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected an integer between 0 and 4294967295"),
        ("expected u16", "expected an integer between 0 and 65535"),
    ] {
        if let Some(rest) = m.strip_suffix(rust) {
            m = format!("{rest}{plain}");
        }
    }
    m
}

/// Where a leaf's effective value came from.
pub(crate) type EnvOrigins = HashMap<String, String>;

/// Parses `yaml`, applies the `SLUICE_*` variables among `vars` and deserializes the result.
/// Returns the configuration (not yet validated) and the env variable behind each overridden
/// path.
pub(crate) fn build(
    yaml: &str,
    origin: &str,
    vars: Vec<(String, String)>,
) -> Result<(Config, EnvOrigins), ConfigError> {
    let defaults = defaults_value();
    let all_leaves = leaves(&defaults);

    // 1. The document.
    let mut document: Value = serde_yaml::from_str(yaml)
        .map_err(|e| ConfigError::Syntax { origin: origin.to_owned(), message: e.to_string() })?;
    document
        .apply_merge()
        .map_err(|e| ConfigError::Syntax { origin: origin.to_owned(), message: e.to_string() })?;
    let mut document_leaves = Vec::new();
    collect_document_leaves(&defaults, &document, &mut Vec::new(), &mut document_leaves)?;

    // 2. The environment.
    let by_env: HashMap<String, &Leaf> =
        all_leaves.iter().map(|l| (env_var_name(&l.dotted()), l)).collect();
    let mut vars: Vec<(String, String)> =
        vars.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    let mut env_leaves = Vec::new();
    for (name, value) in vars {
        match by_env.get(&name) {
            Some(leaf) => env_leaves.push((*leaf, name, value)),
            None if is_non_config_env_var(&name) => {}
            None => {
                let suggestion = suggest(&name, by_env.keys().map(String::as_str));
                return Err(ConfigError::UnknownEnvVar { name, suggestion });
            }
        }
    }

    // 3. Check every set leaf on its own and merge it over the defaults.
    let mut merged = defaults.clone();
    let default_of = |path: &[String]| -> &Value {
        &all_leaves.iter().find(|l| l.path == path).expect("document leaves are known").default
    };
    for (path, given) in document_leaves {
        let key = display_path(&path);
        let value = document_candidates(default_of(&path), &given)
            .and_then(|c| check_leaf(&defaults, &path, c))
            .map_err(|m| ConfigError::invalid(key, None, m))?;
        set_at(&mut merged, &path, value);
    }
    let mut origins = EnvOrigins::new();
    for (leaf, name, raw) in env_leaves {
        let key = leaf.dotted();
        // An empty variable unsets an optional value, except a secret: an empty token set on
        // purpose must not quietly turn authentication off.
        if SECRET_LEAVES.contains(&key.as_str()) && raw.trim().is_empty() {
            return Err(ConfigError::invalid(
                key,
                Some(name),
                "is set but empty: unset the variable for no token, or give a secret",
            ));
        }
        let value = env_candidates(&leaf.default, &raw)
            .and_then(|c| {
                check_leaf(&defaults, &leaf.path, c)
                    .map_err(|m| format!("invalid value {raw:?}: {m}"))
            })
            .map_err(|m| ConfigError::invalid(key.clone(), Some(name.clone()), m))?;
        set_at(&mut merged, &leaf.path, value);
        origins.insert(key, name);
    }

    // 4. Deserialize the whole.
    let config = serde_yaml::from_value::<Config>(merged)
        .map_err(|e| ConfigError::invalid("(root)", None, e.to_string()))?;
    Ok((config, origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_split_camel_case() {
        assert_eq!(env_var_name("kafka.bootstrap.servers"), "SLUICE_KAFKA_BOOTSTRAP_SERVERS");
        assert_eq!(
            env_var_name("streaming.inference.trigger.intervalMs"),
            "SLUICE_STREAMING_INFERENCE_TRIGGER_INTERVAL_MS"
        );
        assert_eq!(
            env_var_name("streaming.inference.metrics.reportingIntervalSeconds"),
            "SLUICE_STREAMING_INFERENCE_METRICS_REPORTING_INTERVAL_SECONDS"
        );
        assert_eq!(env_var_name("gpu.streamsPerDevice"), "SLUICE_GPU_STREAMS_PER_DEVICE");
        assert_eq!(env_var_name("control.token"), "SLUICE_CONTROL_TOKEN");
    }

    #[test]
    fn every_leaf_has_a_distinct_env_name_outside_the_allow_list() {
        let all = leaves(&defaults_value());
        let names: std::collections::HashSet<String> =
            all.iter().map(|l| env_var_name(&l.dotted())).collect();
        assert_eq!(names.len(), all.len());
        for n in &names {
            assert!(!is_non_config_env_var(n), "{n} is shadowed by the allow-list");
        }
    }

    #[test]
    fn leaves_include_null_and_sequence_leaves() {
        let paths: Vec<String> = leaves(&defaults_value()).iter().map(Leaf::dotted).collect();
        assert!(paths.contains(&"control.token".to_owned()));
        assert!(paths.contains(&"gpu.devices".to_owned()));
        assert!(paths.contains(&"streaming.inference.watermark.delayThreshold".to_owned()));
        assert_eq!(paths.len(), 82, "{paths:#?}");
    }

    #[test]
    fn allow_list() {
        for n in [
            "SLUICE_CONFIG",
            "SLUICE_LOG",
            "SLUICE_CACHE",
            "SLUICE_PROFILE_SVG",
            "SLUICE_TEST_X",
            "SLUICE_BENCH_N",
            "SLUICE_LOADGEN_RATE",
        ] {
            assert!(is_non_config_env_var(n), "{n}");
        }
        assert!(is_non_config_env_var("SLUICE_BROKERS"));
        assert!(is_non_config_env_var("SLUICE_BROKER"));
        assert!(!is_non_config_env_var("SLUICE_LOG_LEVEL"));
        assert!(!is_non_config_env_var("SLUICE_CONFIGS"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("intervalMS", ["intervalMs"]), Some("intervalMs".into()));
        assert_eq!(
            suggest("maxBachRows", ["maxBatchRows", "ringCapacity"]),
            Some("maxBatchRows".into())
        );
        assert_eq!(suggest("zzz", ["maxBatchRows"]), None);
        assert_eq!(suggest("kafak", ["kafka", "gpu"]), Some("kafka".into()));
        assert_eq!(suggest("gpu", ["cpu"]), None);
        assert_eq!(suggest("LOG", ["log"]), Some("log".into()));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn env_sequence_forms() {
        let d = Value::Sequence(vec![]);
        let one = |raw| env_candidates(&d, raw).unwrap().remove(0);
        let seq = |v: &[u64]| Value::Sequence(v.iter().map(|&n| Value::from(n)).collect());
        assert_eq!(one("[0,1]"), seq(&[0, 1]));
        assert_eq!(one("0,1"), seq(&[0, 1]));
        assert_eq!(one("3"), seq(&[3]));
        assert_eq!(one(""), seq(&[]));
        assert_eq!(one("[]"), seq(&[]));
        assert!(env_candidates(&d, "[0,").is_err());
    }
}
