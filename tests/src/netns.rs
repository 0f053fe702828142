//! A network namespace of a test's own, linked to the test's by a veth pair: a node run in it is
//! another host on a /30 of its own, and the link can be cut (every packet from the namespace
//! to the test's side silently dropped, as by a partition) and healed. Needs root, as the suite
//! does.
//!
//! The namespace has no name: a holder process keeps it (as the SPIRE tests' namespaces are
//! kept by their server), so that it, and the veth pair with it, goes away with its last
//! process, even when a test is killed and drops nothing.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::run;

/// The namespace and its link.
#[derive(Debug)]
pub struct Namespace {
    /// `cat`, reading a pipe that only this value holds: it lives as long as the value.
    holder: Child,
    /// `/proc/HOLDER/ns/net`.
    path: String,
    host_link: String,
    /// The address of the test's side of the link.
    pub host_ip: String,
    /// The address of the namespace's side.
    pub ip: String,
}

/// One namespace per test process: its links and addresses are named after the pid.
static MADE: AtomicBool = AtomicBool::new(false);

/// Runs `command` and panics with its output on failure.
fn checked(command: &mut Command) {
    let shown = format!("{command:?}");
    let (status, output) = run(command);
    assert!(status.success(), "{shown}: {output}");
}

/// The addresses of the /30 of process `pid`: distinct pids (below 2^22, `pid_max`'s ceiling)
/// get distinct links in 10.0.0.0/8.
fn addresses_of(pid: u32) -> (String, String) {
    let (a, b, c) = ((pid >> 14) % 256, (pid >> 6) % 256, (pid % 64) * 4);
    (
        format!("10.{a}.{b}.{}", c + 1),
        format!("10.{a}.{b}.{}", c + 2),
    )
}

impl Namespace {
    /// Makes the namespace and its link, and waits until they are up.
    pub fn create() -> Self {
        assert!(
            !MADE.swap(true, Ordering::SeqCst),
            "one network namespace per test process (its names come from the pid)"
        );
        let pid = std::process::id();
        let holder = Command::new("unshare")
            .args(["--net", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare");
        let path = format!("/proc/{}/ns/net", holder.id());
        // unshare enters the namespace before it runs cat: until then the holder is in ours.
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our namespace");
        crate::eventually("the namespace", Duration::from_secs(10), || {
            std::fs::read_link(&path).ok().filter(|ns| *ns != ours)
        });
        let (host_ip, ip) = addresses_of(pid);
        let namespace = Self {
            holder,
            path,
            host_link: format!("dp{pid}h"),
            host_ip,
            ip,
        };
        let inside = format!("dp{pid}n");
        checked(Command::new("ip").args([
            "link",
            "add",
            &namespace.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            &namespace.holder.id().to_string(),
        ]));
        checked(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/30", namespace.host_ip),
            "dev",
            &namespace.host_link,
        ]));
        checked(Command::new("ip").args(["link", "set", &namespace.host_link, "up"]));
        let ip = |args: &[&str]| checked(namespace.command_of("ip").args(args));
        ip(&[
            "addr",
            "add",
            &format!("{}/30", namespace.ip),
            "dev",
            &inside,
        ]);
        ip(&["link", "set", &inside, "up"]);
        ip(&["link", "set", "lo", "up"]);
        namespace
    }

    fn command_of(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path))
            .arg("--")
            .arg(program);
        command
    }

    /// `program ARGS...` to be run in the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        self.command_of(program)
    }

    /// Cuts the link: what the namespace sends to the test's side is dropped without a word
    /// (a blackhole route, so no reset and no ICMP error reaches the other side).
    pub fn partition(&self) {
        let route = format!("{}/32", self.host_ip);
        checked(
            self.command_of("ip")
                .args(["route", "add", "blackhole", &route]),
        );
    }

    /// Heals the link.
    pub fn heal(&self) {
        let route = format!("{}/32", self.host_ip);
        checked(
            self.command_of("ip")
                .args(["route", "del", "blackhole", &route]),
        );
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Gone with the namespace's last process; at once, if one still runs in it.
        let _ = run(Command::new("ip").args(["link", "del", &self.host_link]));
    }
}

#[cfg(test)]
mod tests {
    use super::addresses_of;

    #[test]
    fn every_pid_gets_a_link_of_its_own() {
        // The address spells the pid: 8, 8 and 6 of its 22 bits.
        for pid in (1..(1 << 22)).step_by(997).chain([(1 << 22) - 1]) {
            let (host, ns) = addresses_of(pid);
            let octets: Vec<u32> = host.split('.').map(|o| o.parse().expect("octet")).collect();
            assert_eq!(
                (octets[1] << 14) | (octets[2] << 6) | ((octets[3] - 1) / 4),
                pid
            );
            assert_eq!(
                ns.rsplit('.').next(),
                Some((octets[3] + 1).to_string().as_str())
            );
        }
    }
}
