//! `deputy`: run the embedded issuer or a local mesh, and fetch, inspect and validate SVIDs.

mod agent_add;
mod approvals;
mod audit;
mod chain;
mod demo_agent;
mod dev;
mod doctor;
mod endpoint;
mod issuer;
mod jwt;
mod policy;
mod revoke;
mod svid;

use clap::{Parser, Subcommand};

/// Deputy: SPIFFE identities, mTLS and delegation for AI agents.
#[derive(Debug, Parser)]
#[command(name = "deputy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded SPIFFE issuer (stands in for a SPIRE agent).
    Issuer(issuer::IssuerArgs),
    /// Fetch or inspect X.509-SVIDs.
    #[command(subcommand)]
    Svid(svid::SvidCommand),
    /// Inspect and verify delegation chains.
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// Fetch or validate JWT-SVIDs.
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
    /// Evaluate, test and check policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List, show, approve and deny calls held for a human's approval (the operator socket).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Revoke a task, an agent or a principal on a deputyd (the operator socket): new calls
    /// under it are refused, those in flight cut, and the nodes the task went on to told.
    Revoke(revoke::RevokeArgs),
    /// List the revocations in force on a deputyd.
    #[command(subcommand)]
    Revocations(revoke::RevocationsCommand),
    /// Check nodes' audit trails, and ask them who did what for whom.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Onboard agents: write and check what a new agent needs.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Check a node: its sockets, SVIDs, policy, Vault, PostgreSQL proxies, audit trail and
    /// clock, and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Start a local mesh: an issuer and a deputyd with two sample agents, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Run a small example agent: an HTTP service that shows who called it (for `deputy dev`
    /// and the tests).
    DemoAgent(demo_agent::DemoAgentArgs),
    /// Run deputyd from this binary (what `deputy dev` starts for each node).
    #[command(hide = true)]
    Node(deputyd::Args),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Add an agent: its deputyd stanza, its registration (deputy issuer entry, or SPIRE's
    /// command), what the policy lets it do, a Vault role stub; validated before anything is
    /// written. Prints what it did and what to run next.
    Add(agent_add::AddArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Issuer(args) => issuer::run(args).await,
            Command::Svid(command) => svid::run(command).await,
            Command::Jwt(command) => jwt::run(command).await,
            Command::Chain(command) => chain::run(command).await,
            Command::Policy(command) => policy::run(command).await,
            Command::Approvals(command) => approvals::run(command).await,
            Command::Revoke(args) => revoke::revoke(args).await,
            Command::Revocations(command) => revoke::run(command).await,
            Command::Audit(command) => audit::run(command),
            Command::Agent(AgentCommand::Add(args)) => agent_add::run(&args),
            Command::Doctor(args) => doctor::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::DemoAgent(args) => demo_agent::run(args).await,
            Command::Node(args) => deputyd::run(args).await.map(deputyd::Stopped::exit_code),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
