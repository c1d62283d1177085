//! The model repository on disk: `<root>/<name>/<version>/sluice.toml`, and
//! `<root>/<name>/model.toml` with `serving = "<version>"` naming the version that serves
//! requests which do not ask for one (default: the highest version).
//!
//! What Sluice writes (the serving version set through the control plane) goes to the state
//! directory when one is configured (`streaming.inference.model.stateDirectory`), as
//! `<state>/<name>/model.toml`, so that the repository itself can be mounted read-only; that
//! file wins over the repository's own.

use super::rollout::{Canary, RolloutState};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// A model directory as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntry {
    pub name: String,
    /// Versions present, in ascending order.
    pub versions: Vec<String>,
    /// The version that serves by default.
    pub serving: Option<String>,
}

/// `<name>/model.toml`.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct ModelToml {
    #[serde(skip_serializing_if = "Option::is_none")]
    serving: Option<String>,
    /// The traffic split, `version → weight` (`POST .../traffic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<std::collections::BTreeMap<String, u32>>,
    /// The shadow version (`POST .../traffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shadow: Option<String>,
    /// The automatic canary and its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    canary: Option<Canary>,
}

/// A model repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    /// Where Sluice writes its state; `None`: beside the models.
    state: Option<PathBuf>,
}

/// Model names and versions are path components: letters, digits, `.`, `_`, `-`, not starting
/// with a dot, at most 128 bytes. This keeps `../` and friends out of the repository.
pub fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Orders versions numerically where both are numbers ("2" < "10"), else as strings.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

impl Repository {
    /// Opens a repository; the directory must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ModelError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(ModelError::Io {
                path: root,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model repository directory not found",
                ),
            });
        }
        Ok(Repository { root, state: None })
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the root directory can be listed now (false once its mount is lost, say).
    pub fn is_readable(&self) -> bool {
        std::fs::read_dir(&self.root).is_ok()
    }

    /// Versions of `name` present on disk (directories holding `sluice.toml`), ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<String>, ModelError> {
        if !valid_component(name) {
            return Err(ModelError::InvalidName(name.to_string()));
        }
        let dir = self.root.join(name);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ModelError::UnknownModel { name: name.to_string(), version: None })
            }
            Err(e) => return Err(ModelError::Io { path: dir, source: e }),
        };
        let mut versions: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("sluice.toml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|v| valid_component(v))
            .collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        Ok(versions)
    }

    /// Writes Sluice's state under `dir` instead of beside the models (created on the first
    /// write).
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state = dir;
        self
    }

    /// Where Sluice writes its state (the repository itself when no state directory is set).
    pub fn state_dir(&self) -> &Path {
        self.state.as_deref().unwrap_or(&self.root)
    }

    /// `name`'s `model.toml`: the state directory's (written by Sluice) if it exists, else
    /// the repository's; the default (empty) when neither exists.
    fn read_toml(&self, name: &str) -> Result<(PathBuf, ModelToml), ModelError> {
        let written = self.state.as_ref().map(|s| s.join(name).join("model.toml"));
        let path = written
            .filter(|p| p.is_file())
            .unwrap_or_else(|| self.root.join(name).join("model.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let parsed = toml::from_str(&text)
                    .map_err(|e| ModelError::Spec { path: path.clone(), reason: e.to_string() })?;
                Ok((path, parsed))
            }
            Err(_) => Ok((path, ModelToml::default())),
        }
    }

    /// The version serving `name`: the state directory's `model.toml` (written by
    /// [`set_serving`](Self::set_serving)), else the repository's, else the highest version.
    pub fn serving_version(&self, name: &str) -> Result<String, ModelError> {
        let versions = self.versions(name)?;
        let (toml_path, parsed) = self.read_toml(name)?;
        if let Some(v) = parsed.serving {
            if !versions.contains(&v) {
                return Err(ModelError::Spec {
                    path: toml_path,
                    reason: format!("serving version '{v}' has no directory with a sluice.toml"),
                });
            }
            return Ok(v);
        }
        versions
            .last()
            .cloned()
            .ok_or_else(|| ModelError::UnknownModel { name: name.to_string(), version: None })
    }

    /// Marks `version` as serving `name`: writes `model.toml` in the state directory (or
    /// beside the models without one), atomically.
    pub fn set_serving(&self, name: &str, version: &str) -> Result<(), ModelError> {
        self.version_dir(name, version)?;
        let (_, mut t) = self.read_toml(name)?;
        t.serving = Some(version.to_string());
        self.write_toml(name, &t)
    }

    /// `name`'s stored rollout state (split, shadow, canary; `serving` as stored, if it is).
    pub fn rollout_of(&self, name: &str) -> Result<RolloutState, ModelError> {
        let t = self.read_toml(name)?.1;
        Ok(RolloutState { serving: t.serving, split: t.split, shadow: t.shadow, canary: t.canary })
    }

    /// Stores `name`'s rollout state (the serving version only when `state` names one), like
    /// [`set_serving`](Self::set_serving). Every version it names must exist.
    pub fn set_rollout(&self, name: &str, state: &RolloutState) -> Result<(), ModelError> {
        for v in state.versions() {
            self.version_dir(name, &v)?;
        }
        let (_, mut t) = self.read_toml(name)?;
        if let Some(s) = &state.serving {
            t.serving = Some(s.clone());
        }
        t.split = state.split.clone();
        t.shadow = state.shadow.clone();
        t.canary = state.canary.clone();
        self.write_toml(name, &t)
    }

    fn write_toml(&self, name: &str, t: &ModelToml) -> Result<(), ModelError> {
        let dir = self.state_dir().join(name);
        let path = dir.join("model.toml");
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string(t)
            .map_err(|e| ModelError::Spec { path: path.clone(), reason: e.to_string() })?;
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        written.map_err(|e| {
            let hint = if self.state.is_none() {
                "; models are often mounted read-only: set streaming.inference.model.stateDirectory to a writable directory"
            } else {
                ""
            };
            ModelError::Spec { path, reason: format!("writing the model's state: {e}{hint}") }
        })
    }

    /// The directory of one version; errors if it does not exist.
    pub fn version_dir(&self, name: &str, version: &str) -> Result<PathBuf, ModelError> {
        if !valid_component(name) {
            return Err(ModelError::InvalidName(name.to_string()));
        }
        if !valid_component(version) {
            return Err(ModelError::InvalidName(version.to_string()));
        }
        let dir = self.root.join(name).join(version);
        if dir.join("sluice.toml").is_file() {
            Ok(dir)
        } else {
            Err(ModelError::UnknownModel {
                name: name.to_string(),
                version: Some(version.to_string()),
            })
        }
    }

    /// All models in the repository, sorted by name.
    pub fn list(&self) -> Result<Vec<ModelEntry>, ModelError> {
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| ModelError::Io { path: self.root.clone(), source: e })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_component(n))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let versions = self.versions(&name)?;
            if versions.is_empty() {
                continue;
            }
            let serving = self.serving_version(&name).ok();
            out.push(ModelEntry { name, versions, serving });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(root: &Path, name: &str, version: &str) {
        let d = root.join(name).join(version);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("sluice.toml"), "kind = \"mlp\"\n").unwrap();
    }

    #[test]
    fn versions_and_serving() {
        let tmp = tempfile::tempdir().unwrap();
        mk(tmp.path(), "m", "2");
        mk(tmp.path(), "m", "10");
        mk(tmp.path(), "m", "1");
        let repo = Repository::open(tmp.path()).unwrap();
        assert_eq!(repo.versions("m").unwrap(), vec!["1", "2", "10"]);
        assert_eq!(repo.serving_version("m").unwrap(), "10");
        repo.set_serving("m", "2").unwrap();
        assert_eq!(repo.serving_version("m").unwrap(), "2");
        assert!(matches!(repo.set_serving("m", "3"), Err(ModelError::UnknownModel { .. })));
        assert!(matches!(repo.serving_version("nope"), Err(ModelError::UnknownModel { .. })));
        assert!(matches!(repo.versions("../etc"), Err(ModelError::InvalidName(_))));
        assert!(matches!(repo.version_dir("m", ".."), Err(ModelError::InvalidName(_))));
        let list = repo.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].serving.as_deref(), Some("2"));
    }

    /// Every file under `root`, with its contents.
    fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn with_a_state_directory_the_repository_is_never_written_and_the_state_outlives_it() {
        let models = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        mk(models.path(), "m", "1");
        mk(models.path(), "m", "2");
        std::fs::write(models.path().join("m/model.toml"), "serving = \"1\"\n").unwrap();
        let before = tree(models.path());
        let open = || {
            Repository::open(models.path())
                .unwrap()
                .with_state_dir(Some(state.path().join("sluice")))
        };
        let repo = open();
        assert_eq!(repo.serving_version("m").unwrap(), "1", "the repository's own choice");
        repo.set_serving("m", "2").unwrap();
        assert_eq!(repo.serving_version("m").unwrap(), "2");
        assert_eq!(tree(models.path()), before, "nothing written into the repository");
        assert!(state.path().join("sluice/m/model.toml").is_file());
        // A new process (a restart) reads the state back.
        assert_eq!(open().serving_version("m").unwrap(), "2");
        assert_eq!(open().list().unwrap()[0].serving.as_deref(), Some("2"));
    }

    #[test]
    fn an_unwritable_repository_names_the_state_directory_key() {
        let models = tempfile::tempdir().unwrap();
        mk(models.path(), "m", "1");
        // A directory where the temporary file would go: the write fails, as on a read-only
        // mount (root ignores permission bits, so a chmod would not do).
        std::fs::create_dir_all(models.path().join("m/model.toml.tmp")).unwrap();
        let err = Repository::open(models.path()).unwrap().set_serving("m", "1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("streaming.inference.model.stateDirectory"), "{msg}");
    }
}
