//! Fuzzes the embedded issuer's registration entries file: any text gets entries or an error,
//! never a panic. Relative bundle paths are read from an empty directory. Seeds: examples/.
#![no_main]

use std::sync::LazyLock;

use deputy_issuer::Registry;
use libfuzzer_sys::fuzz_target;
use spiffe::TrustDomain;

static EMPTY: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("deputy-fuzz-entries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    dir
});

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // A bundle path reaching out of the empty directory would read the machine's files
        // (`/dev/zero` never ends): not what is fuzzed here.
        if text.contains("..") || text.contains('/') {
            return;
        }
        let domain = TrustDomain::new("example.org").expect("trust domain");
        let _ = Registry::parse(text, "fuzz.toml", &EMPTY, &domain);
    }
});
