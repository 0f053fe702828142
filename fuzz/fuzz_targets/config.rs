//! Fuzzes deputyd's configuration parser and validator (`deputyd --check`, and every start and
//! reload): any text gets a configuration or an error, never a panic. Seeds: examples/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = deputyd::Config::parse(text, "fuzz.toml");
    }
});
