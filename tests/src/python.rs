//! Python programs of the tests, on the environment `scripts/peers` installs
//! (`deputy-sdk-python`: httpx, the official MCP and A2A SDKs, uvicorn, pytest), with the SDK
//! read from this clone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::{Process, peers, run};

/// The Python SDK's directory in this clone.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python")
}

/// `python` with the SDK on its path, in `dir`.
fn python(dir: &Path) -> Command {
    let mut command = Command::new(peers::peer("deputy-sdk-python"));
    command
        .current_dir(dir)
        .env("PYTHONPATH", sdk_dir().join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// Serves the ASGI app `app` (`MODULE:ATTRIBUTE`, found in `dir`) on loopback with
/// `deputy.serve`; returns it and its address.
pub fn app(dir: &Path, app: &str, env: &[(&str, String)]) -> (Process, String) {
    let mut command = python(dir);
    command
        .args(["-m", "deputy.serve", app, "--name", app])
        .envs(env.iter().map(|(k, v)| (k, v)));
    let process = Process::spawn(&mut command);
    let line = process
        .output
        .wait_for("listening on", Duration::from_secs(60));
    let addr = line.rsplit(' ').next().expect("address").trim().to_owned();
    (process, addr)
}

/// Runs pytest on `tests` (a file or directory) with `env`; fails the test, with pytest's
/// output, unless every test ran and passed.
pub fn pytest(tests: &Path, env: &[(&str, std::ffi::OsString)]) -> String {
    let dir = tests.parent().expect("tests have a directory");
    let (status, output): (ExitStatus, String) = run(python(dir)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "console_output_style=classic",
        ])
        .arg(tests)
        .envs(env.iter().map(|(k, v)| (k, v))));
    assert!(
        status.success(),
        "pytest {} failed:\n{output}",
        tests.display()
    );
    // Every test ran: none was skipped or deselected.
    assert!(
        !output.contains("skipped") && !output.contains("deselected"),
        "{output}"
    );
    output
}
