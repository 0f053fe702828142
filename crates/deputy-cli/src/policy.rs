//! `deputy policy`: evaluate, test and check policies as deputyd would load them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use deputy_policy::rego::{RegoPolicy, run_tests};
use deputy_policy::{Decision, Engine as _, PolicyInput};

/// `deputy policy ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Decide one input document and print the decision (exit 0 allowed, 2 denied).
    Eval {
        /// The input document (JSON, version 1; see policies/input.schema.json).
        #[arg(long)]
        input: PathBuf,
        /// A directory of .rego files and data.json (the `rego` engine).
        #[arg(long)]
        dir: PathBuf,
        /// Print the entrypoint's raw value too, as the engine returned it.
        #[arg(long)]
        raw: bool,
    },
    /// Run every `test_*` rule in a policy directory, as `opa test` does.
    Test {
        /// The directory.
        dir: PathBuf,
    },
    /// Load a policy as deputyd would, and list its modules, entrypoint and revision.
    Check {
        /// A directory of .rego files and data.json.
        #[arg(long)]
        dir: PathBuf,
    },
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Eval { input, dir, raw } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            // Parsed as the typed document first: a field the schema does not know is an error
            // here, not a silent undefined in the policy.
            let typed: PolicyInput = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a version-1 input document (policies/input.schema.json)",
                    input.display()
                )
            })?;
            let policy = RegoPolicy::load(&dir)?;
            let value = serde_json::to_value(&typed)?;
            let result = policy.evaluate(&value);
            let decision = match &result {
                Ok(value) => Decision::from_result(value.as_ref()),
                Err(e) => Decision::deny(e.to_string()),
            };
            if raw {
                match &result {
                    Ok(value) => eprintln!("raw: {}", value.clone().unwrap_or_default()),
                    Err(e) => eprintln!("raw: error: {e}"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&decision)?);
            eprintln!("engine rego, revision {}", policy.revision());
            Ok(if decision.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        PolicyCommand::Test { dir } => {
            let outcomes = run_tests(&dir)?;
            if outcomes.is_empty() {
                anyhow::bail!("no test_* rules in {}", dir.display());
            }
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            for outcome in &outcomes {
                if outcome.passed {
                    println!("PASS {}", outcome.name);
                } else {
                    println!("FAIL {}: {}", outcome.name, outcome.detail);
                }
            }
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Check { dir } => {
            let policy = RegoPolicy::load(&dir)?;
            println!("engine      rego");
            println!("entrypoint  {}", deputy_policy::ENTRYPOINT);
            println!("revision    {}", policy.revision());
            for module in policy.modules() {
                println!("module      {module}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
