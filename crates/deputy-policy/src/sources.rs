//! Reading a policy directory: its `.rego` files and its `data.json`, and the revision that
//! names exactly this content.

use std::path::{Path, PathBuf};

use crate::LoadError;

/// Largest `data.json` accepted.
const MAX_DATA_BYTES: u64 = 16 * 1024 * 1024;

/// The content of a policy directory.
#[derive(Debug, Clone)]
pub struct PolicySources {
    /// `(path relative to the directory, text)` of every module, sorted by path.
    pub modules: Vec<(String, String)>,
    /// The base document (`data.json`, or an empty object).
    pub data: serde_json::Value,
    /// `sha256:` and 16 hex digits of everything above: the same content, the same revision.
    pub revision: String,
}

impl PolicySources {
    /// Reads `dir`; `*_test.rego` files are included only when `with_tests`.
    pub fn read(dir: &Path, with_tests: bool) -> Result<Self, LoadError> {
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        files.sort();
        let mut modules = Vec::new();
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for path in files {
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            if !with_tests && name.ends_with("_test.rego") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
            digest.update(name.as_bytes());
            digest.update(&[0]);
            digest.update(text.as_bytes());
            digest.update(&[0]);
            modules.push((name, text));
        }
        if modules.is_empty() {
            return Err(LoadError::NoModules {
                dir: dir.display().to_string(),
            });
        }
        let data_path = dir.join("data.json");
        let data = match std::fs::metadata(&data_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                serde_json::Value::Object(Default::default())
            }
            Err(source) => {
                return Err(LoadError::Io {
                    path: data_path.display().to_string(),
                    source,
                });
            }
            Ok(meta) if meta.len() > MAX_DATA_BYTES => {
                return Err(LoadError::Data {
                    path: data_path.display().to_string(),
                    reason: format!(
                        "{} bytes, more than the {MAX_DATA_BYTES} allowed",
                        meta.len()
                    ),
                });
            }
            Ok(_) => {
                let bytes = std::fs::read(&data_path).map_err(|source| LoadError::Io {
                    path: data_path.display().to_string(),
                    source,
                })?;
                digest.update(b"data.json\0");
                digest.update(&bytes);
                let data: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| LoadError::Data {
                        path: data_path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                if !data.is_object() {
                    return Err(LoadError::Data {
                        path: data_path.display().to_string(),
                        reason: "the top level must be an object".into(),
                    });
                }
                data
            }
        };
        let hash = digest.finish();
        let hex: String = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            modules,
            data,
            revision: format!("sha256:{hex}"),
        })
    }
}

fn collect(dir: &Path, into: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if kind.is_dir() {
            collect(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "rego") {
            into.push(path);
        }
    }
    Ok(())
}

/// Names, sizes and modification times of a directory's policy files.
pub(crate) type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The fingerprint of `dir`: cheap to take every few seconds to notice a change.
pub(crate) fn fingerprint(dir: &Path) -> Fingerprint {
    if dir.is_file() {
        // A bundle: the file itself.
        let meta = std::fs::metadata(dir).ok();
        return vec![(
            dir.to_owned(),
            meta.as_ref().map_or(0, std::fs::Metadata::len),
            meta.and_then(|m| m.modified().ok()),
        )];
    }
    let mut files = Vec::new();
    let _ = collect(dir, &mut files);
    files.push(dir.join("data.json"));
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (path, size, modified)
        })
        .collect()
}
