//! `deputy policy`: evaluate, test and check policies as deputyd would load them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use deputy_policy::rego::{RegoPolicy, run_tests};
use deputy_policy::{Decision, Engine, PolicyInput, PolicySource, WasmPolicy};

/// Which policy: Rego sources or a compiled wasm bundle, as deputyd's `[policy]` names them.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Source {
    /// A directory of .rego files and data.json (the `rego` engine).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A bundle.tar.gz built by `opa build -t wasm -e deputy/authz/decision` (the `wasm` engine).
    #[arg(long)]
    bundle: Option<PathBuf>,
}

impl Source {
    fn policy(&self) -> PolicySource {
        match (&self.dir, &self.bundle) {
            (_, Some(bundle)) => PolicySource::WasmBundle(bundle.clone()),
            (Some(dir), None) => PolicySource::RegoDir(dir.clone()),
            // clap requires exactly one of the two.
            (None, None) => PolicySource::RegoDir(PathBuf::from(".")),
        }
    }

    fn load(&self) -> anyhow::Result<std::sync::Arc<dyn Engine>> {
        let source = self.policy();
        source
            .load_engine()
            .with_context(|| format!("cannot load the policy ({source})"))
    }
}

/// `deputy policy ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Decide one input document and print the decision (exit 0 allowed, 2 denied, 3 allowed
    /// once a human approves).
    ///
    /// With `--inputs`, decide every line of a JSON Lines file instead (inputs, or decision log
    /// `input` values) and print one JSON line per input with the raw value and the decision.
    Eval {
        /// The input document (JSON, version 1; see policies/input.schema.json).
        #[arg(long, required_unless_present = "inputs", conflicts_with = "inputs")]
        input: Option<PathBuf>,
        /// A JSON Lines file of input documents, decided one by one.
        #[arg(long)]
        inputs: Option<PathBuf>,
        #[command(flatten)]
        source: Source,
        /// Print the entrypoint's raw value too, as the engine returned it.
        #[arg(long)]
        raw: bool,
    },
    /// Run every `test_*` rule in a policy directory, as `opa test` does.
    Test {
        /// The directory.
        dir: PathBuf,
    },
    /// Load a policy as deputyd would, and list its entrypoint, revision, and its modules
    /// (Rego) or the builtins it imports (wasm); an unsupported builtin fails the check.
    Check {
        #[command(flatten)]
        source: Source,
    },
    /// List the builtins each engine provides (a policy using another one fails to load).
    Builtins {
        /// Only this engine's, one name per line.
        #[arg(long, value_parser = ["rego", "wasm"])]
        engine: Option<String>,
    },
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Eval {
            input: None,
            inputs: Some(inputs),
            source,
            ..
        } => eval_lines(&inputs, &source),
        PolicyCommand::Eval {
            input: Some(input),
            source,
            raw,
            ..
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let value = typed_input(&text).with_context(|| input.display().to_string())?;
            let policy = source.load()?;
            let result = policy.evaluate(&value);
            let decision = decide(&result);
            if raw {
                match &result {
                    Ok(value) => eprintln!("raw: {}", value.clone().unwrap_or_default()),
                    Err(e) => eprintln!("raw: error: {e}"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&decision)?);
            eprintln!("engine {}, revision {}", policy.kind(), policy.revision());
            // Allowed only once a human approves is not allowed yet: 3, distinct from a denial.
            Ok(if decision.needs_approval() {
                ExitCode::from(3)
            } else if decision.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        PolicyCommand::Eval { .. } => anyhow::bail!("give --input FILE or --inputs FILE.jsonl"),
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
        PolicyCommand::Builtins { engine } => {
            list_builtins(engine.as_deref());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { source } => {
            let (kind, revision, parts) = match source.policy() {
                PolicySource::RegoDir(dir) => {
                    let policy = RegoPolicy::load(&dir).context("cannot load the policy")?;
                    let modules = policy.modules().iter().map(|m| ("module", m.clone()));
                    (
                        "rego",
                        policy.revision().to_owned(),
                        modules.collect::<Vec<_>>(),
                    )
                }
                PolicySource::WasmBundle(bundle) => {
                    let policy = WasmPolicy::load(&bundle).context("cannot load the policy")?;
                    let builtins = policy.builtins().iter().map(|b| ("builtin", b.clone()));
                    ("wasm", policy.revision().to_owned(), builtins.collect())
                }
            };
            println!("engine      {kind}");
            println!("entrypoint  {}", deputy_policy::ENTRYPOINT);
            println!("revision    {revision}");
            for (what, name) in parts {
                println!("{what:<12}{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the builtins of `engine`, or a table of both engines' builtins.
fn list_builtins(engine: Option<&str>) {
    let rego = deputy_policy::rego::supported_builtins();
    let wasm = deputy_policy::wasm::supported_builtins();
    match engine {
        Some("rego") => rego.iter().for_each(|name| println!("{name}")),
        Some(_) => wasm.iter().for_each(|name| println!("{name}")),
        None => {
            let mut names: Vec<&str> = rego.iter().chain(&wasm).copied().collect();
            names.sort_unstable();
            names.dedup();
            let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
            println!("{:width$}  rego  wasm", "builtin");
            let mark = |list: &[&str], name| if list.contains(&name) { "yes" } else { "no" };
            for name in names {
                println!(
                    "{name:width$}  {:<4}  {}",
                    mark(&rego, name),
                    mark(&wasm, name)
                );
            }
        }
    }
}

/// Reads an input document as the typed version-1 document first: a field the schema does not
/// know is an error here, not a silent undefined in the policy.
fn typed_input(text: &str) -> anyhow::Result<serde_json::Value> {
    let typed: PolicyInput = serde_json::from_str(text)
        .context("not a version-1 input document (see policies/input.schema.json)")?;
    Ok(serde_json::to_value(&typed)?)
}

fn decide(result: &Result<Option<serde_json::Value>, deputy_policy::EvalError>) -> Decision {
    match result {
        Ok(value) => Decision::from_result(value.as_ref()),
        Err(e) => Decision::deny(e.to_string()),
    }
}

/// `deputy policy eval --inputs FILE.jsonl`: one output line per input line, in order, with
/// `raw` (the entrypoint's value, `null` when undefined), `error` and the enforced `decision`.
fn eval_lines(path: &std::path::Path, source: &Source) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let policy = source.load()?;
    let mut out = std::io::stdout().lock();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value =
            typed_input(line).with_context(|| format!("{} line {}", path.display(), number + 1))?;
        let result = policy.evaluate(&value);
        let line = serde_json::json!({
            "raw": result.as_ref().ok().cloned().flatten(),
            "error": result.as_ref().err().map(ToString::to_string),
            "decision": decide(&result),
        });
        writeln!(out, "{line}")?;
    }
    eprintln!("engine {}, revision {}", policy.kind(), policy.revision());
    Ok(ExitCode::SUCCESS)
}
