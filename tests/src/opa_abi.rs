//! Stand-ins for what no policy `opa build` compiles can be: a module that never returns
//! (opa_abi.wat; Rego always terminates) or one of an older ABI; and bundles laid out as
//! `opa build -t wasm` writes them, for contents OPA would refuse to write.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What the module's `opa_eval` does.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// Answers an empty result set: the decision is undefined.
    Undefined,
    /// Nothing: it never returns.
    Never,
}

/// A module declaring ABI 1.`minor`, with the entrypoint `deputy/authz/decision`.
pub fn module(minor: u32, answer: Answer) -> Vec<u8> {
    let eval = match answer {
        Answer::Undefined => "(i32.const 3300)",
        Answer::Never => "(loop $forever (br $forever)) (i32.const 0)",
    };
    let text = include_str!("opa_abi.wat")
        .replace("__MINOR__", &minor.to_string())
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
