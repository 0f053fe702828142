//! deputyd's own sandbox: before it starts a thread, deputyd restricts its file access with
//! Landlock to what its configuration names (its config file, policy, state, audit trail,
//! sockets and rendered credential files) and the system files a TLS and DNS client reads.
//!
//! Landlock restricts the thread that asks and the threads it starts afterwards, so it is
//! entered in `main`, before the runtime, the log writer or any other thread exists: every
//! thread deputyd ever runs is inside it. A kernel without Landlock leaves deputyd as it was,
//! and `/status` says so.
//!
//! Unix sockets are reached by `connect`, which Landlock does not govern: the Workload API,
//! the SPIRE admin socket and agents' unix upstreams need no rule.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};
use serde::Serialize;

use crate::Config;

/// The newest Landlock ABI deputyd asks for; an older kernel enforces what it knows.
const ABI_WANTED: ABI = ABI::V5;

/// System files read after start: the system's configuration (TLS roots, the resolver's files,
/// users and groups), libraries and shared data (CA certificates the roots link to, NSS
/// modules), the resolver files that `/etc/resolv.conf` may link to (replaced whole when the
/// network changes, so their directories are named), the node's name (`/proc`), and the random
/// and null devices. Reading is not what the sandbox is for: a compromised deputyd may not write
/// anywhere but its own directories, nor read other services' state, home directories or `/tmp`.
const SYSTEM_READ: &[&str] = &[
    "/etc",
    "/usr",
    "/lib",
    "/lib64",
    "/run/systemd/resolve",
    "/run/NetworkManager",
    "/run/resolvconf",
    "/proc",
    "/sys/fs/cgroup",
    "/sys/devices/system/cpu",
    "/dev/null",
    "/dev/urandom",
    "/dev/random",
];

/// What `/status` says of the sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxStatus {
    /// `on` (every access deputyd handles is restricted), `partial` (the kernel enforces part
    /// of it), `off` (turned off in the config) or `unsupported` (no Landlock in this kernel).
    pub landlock: &'static str,
    /// Paths deputyd may read.
    pub read: Vec<PathBuf>,
    /// Paths deputyd may read and write.
    pub write: Vec<PathBuf>,
    /// The result of the config's test probe, if it names one: `denied` or `allowed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
}

static STATUS: OnceLock<SandboxStatus> = OnceLock::new();

/// The sandbox as entered, for `/status`.
pub fn status() -> Option<&'static SandboxStatus> {
    STATUS.get()
}

/// The paths `config` (read from `config_path`) needs: read-only, and read-write.
fn paths(config: &Config, config_path: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let parent = |path: &Path| path.parent().map(Path::to_path_buf);
    let mut files = vec![config_path.to_path_buf()];
    files.extend(config.reads.iter().cloned());
    files.extend(
        config
            .secrets
            .as_ref()
            .and_then(|s| s.vault.ca_file.clone()),
    );
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    if let Some(policy) = &config.policy {
        match &policy.source {
            deputy_policy::PolicySource::RegoDir(dir) => read.push(dir.clone()),
            deputy_policy::PolicySource::WasmBundle(file) => files.push(file.clone()),
        }
    }
    // A file's directory, not the file: editors, package managers and certificate tools
    // replace a file by renaming a new one over it, which a rule on the old file would miss.
    read.extend(files.iter().filter_map(|f| parent(f)));
    let mut write = vec![config.state_dir.clone(), config.audit.dir.clone()];
    write.extend(config.approvals.socket.as_deref().and_then(parent));
    for agent in &config.proxy.agents {
        if let Some(deputy_proxy::ListenAddr::Unix(path)) = &agent.outbound {
            write.extend(parent(path));
        }
    }
    for proxy in &config.postgres {
        if let deputy_proxy::ListenAddr::Unix(path) = &proxy.listen {
            write.extend(parent(path));
        }
    }
    if let Some(secrets) = &config.secrets {
        write.extend(secrets.files.iter().filter_map(|f| parent(&f.path)));
    }
    (read, write)
}

/// Enters the sandbox for `config`. Call it before any thread starts. `enabled: false` (the
/// config's `[sandbox] landlock = false`) records that it is off.
pub fn enter(config: &Config, config_path: &Path) -> anyhow::Result<&'static SandboxStatus> {
    let (read, write) = paths(config, config_path);
    // A rule needs an existing path: the directories deputyd writes into are made first.
    for dir in &write {
        std::fs::create_dir_all(dir)?;
    }
    let landlock = if config.sandbox.landlock {
        restrict(&read, &write)?
    } else {
        "off"
    };
    if config.sandbox.landlock && landlock != "on" {
        // Logging is not up yet: stderr, which the journal keeps.
        eprintln!(
            "warning: deputyd's Landlock sandbox is {landlock}: the kernel lacks Landlock, or a \
             system call filter refuses its calls (allow landlock_create_ruleset, \
             landlock_add_rule and landlock_restrict_self)"
        );
    }
    let probe = config.sandbox.probe.as_ref().map(|path| {
        match std::fs::read(path) {
            Ok(_) => "allowed",
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied",
            Err(_) => "unreadable",
        }
        .to_owned()
    });
    Ok(STATUS.get_or_init(|| SandboxStatus {
        landlock,
        read,
        write,
        probe,
    }))
}

/// Restricts this thread (and every thread it starts) to `read` and `write`; returns how far
/// the kernel enforces it.
fn restrict(read: &[PathBuf], write: &[PathBuf]) -> anyhow::Result<&'static str> {
    let rules = |paths: &[PathBuf], access| {
        // A path that does not exist on this system (`/lib64`, `/etc/pki`) needs no rule.
        paths
            .iter()
            .filter_map(|path| {
                let dir = std::fs::metadata(path).ok()?.is_dir();
                // A file takes only the rights that apply to files (else the kernel would be
                // asked for less than the rule says, and the sandbox reported partial).
                let access = if dir {
                    access
                } else {
                    access & AccessFs::from_file(ABI_WANTED)
                };
                Some((PathFd::new(path).ok()?, access))
            })
            .map(|(fd, access)| Ok::<_, landlock::RulesetError>(PathBeneath::new(fd, access)))
            .collect::<Vec<_>>()
    };
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))?
        .create()?
        .add_rules(rules(read, AccessFs::from_read(ABI_WANTED)))?
        .add_rules(rules(write, AccessFs::from_all(ABI_WANTED)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "on",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "unsupported",
    })
}

/// Whether a configuration reloaded on SIGHUP needs a path outside the sandbox entered at
/// start: it cannot be widened while deputyd runs, so such a reload is refused.
pub fn outside(config: &Config, config_path: &Path) -> Option<String> {
    let entered = status()?;
    if entered.landlock == "off" || entered.landlock == "unsupported" {
        return None;
    }
    let (read, write) = paths(config, config_path);
    // Compared as the kernel sees them: a symbolic link is followed.
    let real = |path: &PathBuf| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let within = |path: &PathBuf, allowed: &[PathBuf]| {
        allowed.iter().any(|a| real(path).starts_with(real(a)))
    };
    let readable: Vec<PathBuf> = entered.read.iter().chain(&entered.write).cloned().collect();
    read.iter()
        .find(|p| !within(p, &readable))
        .or_else(|| write.iter().find(|p| !within(p, &entered.write)))
        .map(|path| {
            format!(
                "the configuration needs {}, outside the sandbox deputyd entered at start \
                 (Landlock cannot be widened while it runs); restart deputyd to use it",
                path.display()
            )
        })
}
