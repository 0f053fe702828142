//! The Debian package of a node, built by cargo-deb from this workspace's binaries (the test
//! profile's, which `cargo build --workspace --bins` made; a release package is the same with
//! `cargo build --release` first): its contents, its conffile, stripped binaries with their
//! debug info in a separate -dbgsym package, the `deputy` user made by its maintainer script,
//! and lintian finding no error in it.

use std::path::Path;
use std::process::Command;

use deputy_tests::{binary, peers, run};

#[test]
fn the_debian_package_holds_a_node_and_lintian_finds_no_error() {
    let out = tempfile::tempdir().expect("tempdir");
    // target/<profile>/deputyd -> target
    let deputyd = binary("deputyd");
    binary("deputy");
    let target = deputyd
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let (status, output) = run(Command::new(peers::peer("cargo-deb"))
        .args([
            "-p",
            "deputyd",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-o",
        ])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));
    assert!(status.success(), "cargo-deb failed:\n{output}");
    let package = out.path().join("deputy_0.1.0-2_amd64.deb");
    let debug = out.path().join("deputy-dbgsym_0.1.0-2_amd64.ddeb");

    let listing = |file: &Path| {
        let (status, output) = run(Command::new("dpkg-deb").arg("-c").arg(file));
        assert!(status.success(), "{output}");
        output
    };
    let contents = listing(&package);
    for path in [
        "./usr/bin/deputyd",
        "./usr/bin/deputy",
        "./lib/systemd/system/deputyd.service",
        "./lib/systemd/system/deputy-issuer.service",
        "./etc/deputy/deputyd.toml",
        "./usr/share/doc/deputy/README.md",
        "./usr/share/doc/deputy/docs/policy.md",
        "./usr/share/doc/deputy/copyright",
        "./usr/share/doc/deputy/changelog.Debian.gz",
    ] {
        assert!(
            contents.contains(path),
            "{path} is not in the package:\n{contents}"
        );
    }
    // Debug info lives in the -dbgsym package, by build id.
    assert!(listing(&debug).contains("./usr/lib/debug/.build-id/"));

    let control = out.path().join("control");
    let (status, output) = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&package)
        .arg(&control));
    assert!(status.success(), "{output}");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/deputy/deputyd.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        control.join("prerm").exists(),
        "removing the package stops deputyd"
    );

    let root = out.path().join("root");
    let (status, output) = run(Command::new("dpkg-deb").arg("-x").arg(&package).arg(&root));
    assert!(status.success(), "{output}");
    for program in ["deputyd", "deputy"] {
        let (status, sections) = run(Command::new("readelf")
            .args(["-S", "-W"])
            .arg(root.join("usr/bin").join(program)));
        assert!(status.success(), "{sections}");
        assert!(
            !sections.contains(".debug_info") && !sections.contains(".symtab"),
            "{program} is not stripped:\n{sections}"
        );
    }
    // The packaged units run the packaged binaries.
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/deputyd.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/deputyd "), "{unit}");

    let (status, output) = run(Command::new("lintian")
        .args(["--fail-on", "error", "--allow-root"])
        .arg(&package));
    assert!(status.success(), "lintian found errors:\n{output}");
    assert!(
        !output.contains("\nE: ") && !output.starts_with("E: "),
        "{output}"
    );
}
