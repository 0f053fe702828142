# Convenience recipes; each runs what the README documents.

# Start a local mesh (issuer + deputyd + two sample agents) until Ctrl-C.
dev:
    cargo run -p deputy-cli -- dev

# The whole test suite, as CI runs it.
test:
    ./scripts/test

# Issuer benchmarks (results go in BENCHMARKS.md).
bench:
    cargo bench -p deputy-issuer --bench issuer

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings
