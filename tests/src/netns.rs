//! A network namespace of a test's own, linked to the test's by a veth pair: a node run in it is
//! another host on a /30 of its own, and the link can be cut (every packet from the namespace
//! to the test's side silently dropped, as by a partition) and healed. Needs root, as the suite
//! does; everything is removed when the value is dropped.

use std::process::Command;

use crate::run;

/// The namespace and its link.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    host_link: String,
    /// The address of the test's side of the link.
    pub host_ip: String,
    /// The address of the namespace's side.
    pub ip: String,
}

/// Runs `ip ARGS` (in the namespace `ns`, if given) and panics with its output on failure.
fn ip(ns: Option<&str>, args: &[&str]) {
    let mut command = Command::new("ip");
    if let Some(ns) = ns {
        command.args(["netns", "exec", ns, "ip"]);
    }
    let (status, output) = run(command.args(args));
    assert!(status.success(), "ip {}: {output}", args.join(" "));
}

impl Namespace {
    /// Makes the namespace, named after the test process (its links and addresses too, so
    /// that tests running at once never share one).
    pub fn create() -> Self {
        let pid = std::process::id();
        let name = format!("deputy-{pid}");
        let (host_link, ns_link) = (format!("dp{pid}h"), format!("dp{pid}n"));
        // 10.64.0.0/10 holds a /30 per pid below 2^20.
        let (a, b, c) = (64 + (pid >> 14) % 64, (pid >> 6) % 256, (pid % 64) * 4);
        let (host_ip, ns_ip) = (
            format!("10.{a}.{b}.{}", c + 1),
            format!("10.{a}.{b}.{}", c + 2),
        );
        ip(None, &["netns", "add", &name]);
        let namespace = Self {
            name,
            host_link,
            host_ip,
            ip: ns_ip,
        };
        let ns = Some(namespace.name.as_str());
        ip(
            None,
            &[
                "link",
                "add",
                &namespace.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &ns_link,
            ],
        );
        ip(None, &["link", "set", &ns_link, "netns", &namespace.name]);
        ip(
            None,
            &[
                "addr",
                "add",
                &format!("{}/30", namespace.host_ip),
                "dev",
                &namespace.host_link,
            ],
        );
        ip(None, &["link", "set", &namespace.host_link, "up"]);
        ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{}/30", namespace.ip),
                "dev",
                &ns_link,
            ],
        );
        ip(ns, &["link", "set", &ns_link, "up"]);
        ip(ns, &["link", "set", "lo", "up"]);
        namespace
    }

    /// `program ARGS...` to be run in the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Cuts the link: what the namespace sends to the test's side is dropped without a word
    /// (a blackhole route, so no reset and no ICMP error reaches the other side).
    pub fn partition(&self) {
        let route = format!("{}/32", self.host_ip);
        ip(Some(&self.name), &["route", "add", "blackhole", &route]);
    }

    /// Heals the link.
    pub fn heal(&self) {
        let route = format!("{}/32", self.host_ip);
        ip(Some(&self.name), &["route", "del", "blackhole", &route]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = run(Command::new("ip").args(["link", "del", &self.host_link]));
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}
