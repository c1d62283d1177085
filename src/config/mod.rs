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

mod error;
mod load;
mod overlay;
mod types;
mod validate;

pub use error::ConfigError;
pub use load::check_file;
pub use overlay::{env_var_name, is_non_config_env_var, ENV_PREFIX};
pub use types::*;
pub use validate::{topic_name_problem, MAX_RECORD_BYTES, MAX_TOPIC_NAME_LEN, MIN_RECORD_BYTES};
