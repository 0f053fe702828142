//! Stand-ins for compiled OPA policies where no `opa` CLI exists: modules that speak OPA's wasm
//! ABI (opa_abi.wat), and bundles laid out as `opa build -t wasm` writes them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What the module's `eval` answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// The data document (so a bundle's `data.json` is the decision).
    Data,
    /// The input document.
    Input,
    /// Nothing: it never returns.
    Never,
}

/// `entrypoints()` of a module built with `-e deputy/authz/decision`.
pub const DECISION_ONLY: &str = r#"{"deputy/authz/decision":0}"#;

/// `text` as a WAT string holding `[length: i32][bytes]`.
fn length_prefixed(text: &str) -> String {
    let len = u32::try_from(text.len()).expect("short").to_le_bytes();
    len.iter()
        .chain(text.as_bytes())
        .map(|b| format!("\\{b:02x}"))
        .collect()
}

/// A module importing `builtins` (a JSON object of name to id), with `entrypoints`.
pub fn module(builtins: &str, entrypoints: &str, answer: Answer) -> Vec<u8> {
    let eval = match answer {
        Answer::Data => "(call $answer (local.get $ctx) (i32.const 4))",
        Answer::Input => "(call $answer (local.get $ctx) (i32.const 0))",
        Answer::Never => "(loop $forever (br $forever))",
    };
    let text = include_str!("opa_abi.wat")
        .replace("__BUILTINS__", &length_prefixed(builtins))
        .replace("__ENTRYPOINTS__", &length_prefixed(entrypoints))
        .replace("__EVAL__", eval);
    wat::parse_str(&text).expect("the fixture compiles")
}

/// A bundle.tar.gz in `dir` holding `files`, named as `opa build` names them (`/policy.wasm`).
pub fn bundle(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        // OPA writes absolute names, which the tar crate's path setter refuses.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        tar.append(&header, *content).expect("append");
    }
    tar.into_inner()
        .expect("tar")
        .finish()
        .expect("gzip")
        .flush()
        .expect("flush");
    path
}
