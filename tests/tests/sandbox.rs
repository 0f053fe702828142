//! deputyd's Landlock sandbox, for real (the machines' kernels have Landlock): once started,
//! deputyd cannot read a file its configuration does not name, `/status` says the sandbox is
//! on, and a reload that needs a path outside it is refused, the running configuration kept.

use std::time::Duration;

use deputy_tests::mesh::Node;
use deputy_tests::policed::{mesh_data, policy_dir};
use deputy_tests::{IssuerProcess, my_uid, node_config_head, status_of, write_entries};

#[test]
fn deputyd_reads_only_what_its_configuration_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_entries(dir.path(), &["alpha"], "1h", "1h");
    let _issuer = IssuerProcess::start(dir.path());
    // A file deputyd's user may read, outside every path its configuration names.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, "not for deputyd").expect("secret");
    let policy = policy_dir(dir.path(), "policy", &mesh_data(serde_json::json!({})));
    let elsewhere = policy_dir(&outside, "policy", &mesh_data(serde_json::json!({})));

    let config = |policy: &std::path::Path| {
        format!(
            "{}[policy]\ndir = \"{}\"\n[sandbox]\nprobe = \"{}\"\n[[agent]]\nname = \"alpha\"\n\
             spiffe_id = \"spiffe://example.org/agent/alpha\"\noutbound = \"127.0.0.1:0\"\nuids = [{}]\n",
            node_config_head(dir.path()),
            policy.display(),
            secret.display(),
            my_uid()
        )
    };
    // In a directory of its own, as /etc/deputy: deputyd may read the config file's directory.
    std::fs::create_dir_all(dir.path().join("etc")).expect("config dir");
    let path = dir.path().join("etc/deputyd.toml");
    std::fs::write(&path, config(&policy)).expect("config");
    let node = Node::start(&path);
    node.wait_ready();

    let status = status_of(&node.admin);
    let sandbox = &status["sandbox"];
    assert_eq!(sandbox["landlock"], "on", "{status:#}");
    // Readable by the user deputyd runs as, refused by the sandbox.
    assert!(std::fs::read(&secret).is_ok());
    assert_eq!(sandbox["probe"], "denied", "{status:#}");
    let named = |key: &str| -> Vec<String> {
        sandbox[key]
            .as_array()
            .expect("paths")
            .iter()
            .map(|p| p.as_str().expect("path").to_owned())
            .collect()
    };
    assert!(named("read").contains(&policy.display().to_string()));
    assert!(named("write").contains(&dir.path().join("state").display().to_string()));

    // A reload onto a policy outside the sandbox is refused; the running one keeps serving.
    let revision = status["policy"]["revision"].clone();
    std::fs::write(&path, config(&elsewhere)).expect("config");
    node.process.signal(nix::sys::signal::Signal::SIGHUP);
    let line = node
        .process
        .output
        .wait_for("outside the sandbox", Duration::from_secs(20));
    assert!(line.contains(&elsewhere.display().to_string()), "{line}");
    assert!(line.contains("restart deputyd"), "{line}");
    let status = status_of(&node.admin);
    assert_eq!(status["policy"]["revision"], revision, "{status:#}");
    assert_eq!(status["policy"]["last_error"], serde_json::Value::Null);
}
