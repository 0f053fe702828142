//! Policies compiled by the real `opa build -t wasm` (the OPA that `scripts/peers` builds).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::peers::peer;

/// The entrypoint deputyd evaluates.
pub const ENTRYPOINT: &str = "deputy/authz/decision";

/// The repository's `policies` directory.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A directory of Rego `modules` (file name, text) and an optional `data.json` under `dir/name`.
pub fn sources(
    dir: &Path,
    name: &str,
    modules: &[(&str, &str)],
    data: &[(&str, serde_json::Value)],
) -> PathBuf {
    let root = dir.join(name);
    for (file, text) in modules {
        write(&root.join(file), text.as_bytes());
    }
    for (file, value) in data {
        write(&root.join(file), value.to_string().as_bytes());
    }
    root
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// `opa build -t wasm -e ENTRYPOINT` of `inputs` into `dir/name`, with `extra` arguments
/// (`--capabilities FILE`, another `-e`). Panics with OPA's own words if it refuses.
pub fn build_wasm(dir: &Path, name: &str, inputs: &[&Path], extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let result = Command::new(peer("opa"))
        .args(["build", "-t", "wasm"])
        .args(if extra.contains(&"-e") {
            &[][..]
        } else {
            &["-e", ENTRYPOINT][..]
        })
        .args(extra)
        .arg("-o")
        .arg(&out)
        .args(inputs)
        .output()
        .expect("run opa build");
    assert!(
        result.status.success(),
        "opa build failed: {}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// The shipped policy (`policies/authz`, its data beside it) compiled to `dir/name`.
pub fn shipped_bundle(dir: &Path, name: &str) -> PathBuf {
    build_wasm(dir, name, &[&policies_dir().join("authz")], &[])
}

/// OPA's capabilities with one more builtin, `name(string) -> string`, which OPA then compiles
/// as an import: how a policy written for a custom OPA build looks to deputyd.
pub fn capabilities_with(dir: &Path, name: &str) -> PathBuf {
    let current = Command::new(peer("opa"))
        .args(["capabilities", "--current"])
        .output()
        .expect("run opa capabilities");
    assert!(current.status.success(), "opa capabilities failed");
    let mut caps: serde_json::Value = serde_json::from_slice(&current.stdout).expect("json");
    caps["builtins"]
        .as_array_mut()
        .expect("a builtins list")
        .push(serde_json::json!({
            "name": name,
            "decl": {"type": "function", "args": [{"type": "string"}], "result": {"type": "string"}}
        }));
    let path = dir.join("capabilities.json");
    write(&path, caps.to_string().as_bytes());
    path
}

/// The `policy.wasm` inside a bundle `opa build` wrote.
pub fn wasm_of(bundle: &Path) -> Vec<u8> {
    let file = std::fs::File::open(bundle).expect("open bundle");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").ends_with("policy.wasm") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read");
            return bytes;
        }
    }
    panic!("{} holds no policy.wasm", bundle.display());
}
