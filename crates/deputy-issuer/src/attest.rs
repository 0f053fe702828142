//! Unix workload attestation: what the kernel says about a process, as selectors.
//!
//! The caller of a unix socket is identified by SO_PEERCRED (uid, gid, pid), which the kernel
//! fills in and the peer cannot forge. For the Delegated Identity API's pid subscriptions the
//! same facts come from `/proc/<pid>`. Selectors produced:
//! `unix:uid:N`, `unix:gid:N`, `unix:user:NAME`, `unix:group:NAME`,
//! `unix:supplementary_gid:N`, `unix:supplementary_group:NAME` and, for a process in a systemd
//! service, `systemd:id:UNIT.service`.

use std::collections::BTreeSet;

use deputy_identity::Selector;
use nix::unistd::{Gid, Group, Uid, User};

/// The kernel's view of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// Process id, when the kernel reported one.
    pub pid: Option<i32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}, uid {}, gid {}", self.uid, self.gid),
            None => write!(f, "uid {}, gid {}", self.uid, self.gid),
        }
    }
}

/// A process that cannot be attested.
#[derive(Debug, thiserror::Error)]
#[error("cannot attest pid {pid}: {reason}")]
pub struct AttestError {
    /// The process id.
    pub pid: i32,
    /// Why.
    pub reason: String,
}

impl Process {
    /// Reads a process's credentials from `/proc/<pid>/status`.
    pub fn from_pid(pid: i32) -> Result<Self, AttestError> {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| AttestError {
                pid,
                reason: format!("{e} (has the process exited?)"),
            })?;
        // Uid: real effective saved fs; attest the effective ids, as the kernel checks them.
        let effective = |key: &str| -> Option<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        match (effective("Uid:"), effective("Gid:")) {
            (Some(uid), Some(gid)) => Ok(Self {
                pid: Some(pid),
                uid,
                gid,
            }),
            _ => Err(AttestError {
                pid,
                reason: "/proc status has no Uid or Gid line".into(),
            }),
        }
    }

    /// Every selector that describes this process.
    pub fn selectors(&self) -> BTreeSet<Selector> {
        let mut out = BTreeSet::new();
        out.insert(Selector::new("unix", format!("uid:{}", self.uid)));
        out.insert(Selector::new("unix", format!("gid:{}", self.gid)));
        if let Ok(Some(user)) = User::from_uid(Uid::from_raw(self.uid)) {
            out.insert(Selector::new("unix", format!("user:{}", user.name)));
        }
        if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(self.gid)) {
            out.insert(Selector::new("unix", format!("group:{}", group.name)));
        }
        if let Some(pid) = self.pid {
            for gid in supplementary_gids(pid) {
                out.insert(Selector::new("unix", format!("supplementary_gid:{gid}")));
                if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid)) {
                    out.insert(Selector::new(
                        "unix",
                        format!("supplementary_group:{}", group.name),
                    ));
                }
            }
            if let Some(unit) = systemd_unit(pid) {
                out.insert(Selector::new("systemd", format!("id:{unit}")));
            }
        }
        out
    }
}

fn supplementary_gids(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// The systemd service a process runs in, from its cgroup (v2: `0::/system.slice/x.service`).
fn systemd_unit(pid: i32) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_from_cgroup(&cgroup)
}

fn unit_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/')
            .rev()
            .find(|segment| segment.ends_with(".service"))
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process_by_its_ids() {
        let me = Process::from_pid(std::process::id() as i32).expect("own pid");
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
        let selectors = me.selectors();
        assert!(selectors.contains(&Selector::new("unix", format!("uid:{}", me.uid))));
        assert!(selectors.contains(&Selector::new("unix", format!("gid:{}", me.gid))));
    }

    #[test]
    fn a_vanished_pid_is_an_error() {
        let err = Process::from_pid(i32::MAX).expect_err("no such pid");
        assert!(err.to_string().contains("has the process exited"), "{err}");
    }

    #[test]
    fn finds_the_service_in_a_cgroup_path() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/triage.service\n").as_deref(),
            Some("triage.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
    }
}
