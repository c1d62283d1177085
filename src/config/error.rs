//! Why a configuration could not be loaded.

use std::path::PathBuf;

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
