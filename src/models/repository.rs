//! The model repository on disk: `<root>/<name>/<version>/sluice.toml`, and
//! `<root>/<name>/model.toml` with `serving = "<version>"` naming the version that serves
//! requests which do not ask for one (default: the highest version).

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelToml {
    serving: Option<String>,
}

/// A model repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
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
        Ok(Repository { root })
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

    /// The version serving `name`: `model.toml`'s `serving`, else the highest version.
    pub fn serving_version(&self, name: &str) -> Result<String, ModelError> {
        let versions = self.versions(name)?;
        let toml_path = self.root.join(name).join("model.toml");
        if let Ok(text) = std::fs::read_to_string(&toml_path) {
            let parsed: ModelToml = toml::from_str(&text)
                .map_err(|e| ModelError::Spec { path: toml_path.clone(), reason: e.to_string() })?;
            if let Some(v) = parsed.serving {
                if !versions.contains(&v) {
                    return Err(ModelError::Spec {
                        path: toml_path,
                        reason: format!(
                            "serving version '{v}' has no directory with a sluice.toml"
                        ),
                    });
                }
                return Ok(v);
            }
        }
        versions
            .last()
            .cloned()
            .ok_or_else(|| ModelError::UnknownModel { name: name.to_string(), version: None })
    }

    /// Marks `version` as serving `name` (writes `model.toml`).
    pub fn set_serving(&self, name: &str, version: &str) -> Result<(), ModelError> {
        self.version_dir(name, version)?;
        let path = self.root.join(name).join("model.toml");
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, format!("serving = \"{version}\"\n"))
            .map_err(|e| ModelError::Io { path: tmp.clone(), source: e })?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::Io { path, source: e })
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
}
