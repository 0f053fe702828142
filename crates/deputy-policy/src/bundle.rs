//! OPA bundles: the `bundle.tar.gz` that `opa build -t wasm -e deputy/authz/decision` writes.
//!
//! A bundle holds `/policy.wasm`, the data documents (`/data.json` at the root, and
//! `/a/b/data.json` for `data.a.b`), a `/.manifest` and the Rego sources. Both `policy.wasm` and
//! the data are read: a policy without its data decides differently.

use std::io::Read as _;
use std::path::Path;

use crate::LoadError;

/// Largest bundle file accepted (compressed).
const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest total of the files inside a bundle (uncompressed): a gzip bomb stops here.
const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
/// Largest data document in a bundle (as for the `rego` engine's data.json).
const MAX_DATA_BYTES: u64 = 16 * 1024 * 1024;
/// Most entries read from a bundle.
const MAX_ENTRIES: usize = 10_000;

/// What deputyd takes from a bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The compiled policy.
    pub wasm: Vec<u8>,
    /// Every data document, merged at its path.
    pub data: serde_json::Value,
    /// `sha256:` and the first 16 hex digits of the bundle file's digest.
    pub revision: String,
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> LoadError {
    LoadError::Bundle {
        path: path.display().to_string(),
        reason: format!(
            "{reason}; rebuild it with `opa build -t wasm -e deputy/authz/decision <dir>`"
        ),
    }
}

/// Reads the bundle at `path`.
pub fn read(path: &Path) -> Result<Bundle, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err(corrupt(
            path,
            format!(
                "{} bytes, more than the {MAX_BUNDLE_BYTES} allowed",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let revision = format!(
        "sha256:{}",
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(corrupt(
            path,
            "not a gzip-compressed tar archive (it does not start like one)",
        ));
    }
    let gz = flate2::read::GzDecoder::new(&bytes[..]);
    // One byte over the bound is read to notice the bound: an archive cut there would otherwise
    // look complete, with its later data documents silently missing.
    let mut archive = tar::Archive::new(gz.take(MAX_UNPACKED_BYTES + 1));
    let mut wasm = None;
    let mut data = serde_json::Value::Object(Default::default());
    let entries = archive
        .entries()
        .map_err(|e| corrupt(path, format!("not a gzip-compressed tar archive ({e})")))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(corrupt(path, format!("more than {MAX_ENTRIES} files")));
        }
        let mut entry =
            entry.map_err(|e| corrupt(path, format!("the archive is damaged ({e})")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| corrupt(path, format!("a file name is not readable ({e})")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        let is_data = name == "data.json" || name.ends_with("/data.json");
        if is_data && entry.size() > MAX_DATA_BYTES {
            return Err(corrupt(
                path,
                format!(
                    "{name} is {} bytes, more than the {MAX_DATA_BYTES} allowed",
                    entry.size()
                ),
            ));
        }
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| corrupt(path, format!("{name} cannot be read ({e})")))?;
        if name == "policy.wasm" {
            wasm = Some(content);
        } else if is_data {
            let document: serde_json::Value = serde_json::from_slice(&content)
                .map_err(|e| corrupt(path, format!("{name} is not JSON ({e})")))?;
            let at: Vec<&str> = name
                .trim_end_matches("data.json")
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            merge_at(&mut data, &at, document)
                .map_err(|reason| corrupt(path, format!("{name}: {reason}")))?;
        }
    }
    if archive.into_inner().limit() == 0 {
        return Err(corrupt(
            path,
            format!("it unpacks to more than {MAX_UNPACKED_BYTES} bytes"),
        ));
    }
    let wasm = wasm.ok_or_else(|| LoadError::Bundle {
        path: path.display().to_string(),
        reason: "it holds no policy.wasm: build it with `opa build -t wasm -e \
                 deputy/authz/decision <dir>` (a plain `opa build` bundle holds Rego only; \
                 serve that directory with engine = \"rego\")"
            .into(),
    })?;
    Ok(Bundle {
        wasm,
        data,
        revision,
    })
}

/// Places `document` at `path` under `data`, merging objects.
fn merge_at(
    data: &mut serde_json::Value,
    path: &[&str],
    document: serde_json::Value,
) -> Result<(), String> {
    let mut node = data;
    for segment in path {
        let object = node
            .as_object_mut()
            .ok_or_else(|| format!("data at {segment} is not an object"))?;
        node = object
            .entry((*segment).to_owned())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    match (node, document) {
        (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
            for (key, value) in from {
                if into.contains_key(&key) {
                    return Err(format!("data key {key} is defined twice"));
                }
                into.insert(key, value);
            }
            Ok(())
        }
        (_, _) if path.is_empty() => Err("the root data document must be an object".into()),
        (slot, document) => {
            *slot = document;
            Ok(())
        }
    }
}
