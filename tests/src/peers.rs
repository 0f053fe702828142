//! The real programs the tests run against (SPIRE, OPA, Vault, ghostunnel, the go-spiffe and
//! py-spiffe clients), built by `scripts/peers` into a cache outside the repository.

use std::path::PathBuf;

/// The directory `scripts/peers` links the programs from: `$DEPUTY_PEERS_BIN`, else
/// `$DEPUTY_CACHE/peers/bin`, else `~/.cache/deputy/peers/bin` (what the script uses).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEPUTY_PEERS_BIN") {
        return dir.into();
    }
    let cache = std::env::var_os("DEPUTY_CACHE").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/deputy")
        },
        PathBuf::from,
    );
    cache.join("peers/bin")
}

/// The path of a peer program. A missing peer fails the test: the peers are part of the suite,
/// never skipped.
pub fn peer(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the test peers first with ./scripts/peers (the README's test \
         command runs it; the first run takes about half an hour)",
        path.display()
    );
    path
}
