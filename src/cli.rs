//! The command line: `serve`, `migrate`, `openapi`, `lint`. Every failure ends with one
//! readable line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Settings};
use crate::pipeline::Diagnostic;
use crate::submission::{ConfigFile, SUBMISSION, Submission};

#[derive(Debug, Parser)]
#[command(
    name = "piculet",
    version,
    about = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes",
    long_about = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes, with \
                  status and live logs over REST and Server-Sent Events.\n\nEvery setting below \
                  can also be given as its PICULET_* environment variable or as a key of the TOML \
                  file named by --config (flag > environment > file > default)."
)]
pub struct Cli {
    /// A TOML file holding settings, keyed by their flag names with '_' (e.g. database_url)
    #[arg(long, env = "PICULET_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (and run pipelines) until SIGTERM or Ctrl-C
    Serve,
    /// Apply the database migrations and exit
    Migrate,
    /// Print the OpenAPI document
    Openapi,
    /// Validate pipeline files offline: exit 0 when valid, 1 with every error as file:line:column: message
    Lint {
        /// Pipeline files (.woodpecker.yaml, .woodpecker/*.yaml, JSON); each is one workflow, named by its file stem
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A variable of the submission, as the server would get it (repeatable)
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
        vars: Vec<(String, String)>,
        /// The name of a secret the submission would carry (repeatable); `from_secret` naming
        /// another is an error
        #[arg(long = "secret", value_name = "NAME")]
        secrets: Vec<String>,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Prints one line and returns the exit code for a failure.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("piculet: error: {message}");
    ExitCode::from(2)
}

fn config(cli: &Cli) -> Result<Config, String> {
    let settings = match &cli.config {
        Some(path) => cli
            .settings
            .clone()
            .with_file(path)
            .map_err(|e| e.to_string())?,
        None => cli.settings.clone(),
    };
    Config::from_settings(&settings).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Openapi => {
            print!("{}", crate::api::openapi::document());
            ExitCode::SUCCESS
        }
        Command::Lint {
            files,
            vars,
            secrets,
        } => lint(files, vars, secrets),
        Command::Serve | Command::Migrate => {
            let config = match config(&cli) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            crate::telemetry::init(config.log_format, &config.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the async runtime: {e}")),
            };
            let result = runtime.block_on(async {
                match cli.command {
                    Command::Serve => crate::server::serve(config)
                        .await
                        .map_err(|e| e.to_string()),
                    _ => migrate(&config).await,
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

async fn migrate(config: &Config) -> Result<(), String> {
    let store = crate::store::Store::connect(&config.database_url)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    store.close().await;
    eprintln!("piculet: migrations applied");
    Ok(())
}

/// A workflow's name from its file: `.woodpecker/build.yaml` is `build`.
fn workflow_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.trim_start_matches('.').to_string()
}

fn lint(files: &[PathBuf], vars: &[(String, String)], secrets: &[String]) -> ExitCode {
    let mut configs = Vec::new();
    for path in files {
        match std::fs::read_to_string(path) {
            Ok(content) => configs.push(ConfigFile {
                name: workflow_name(path),
                content,
            }),
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        }
    }
    let submission = Submission {
        configs,
        variables: vars.iter().cloned().collect(),
        ..Submission::default()
    };
    let report = submission.lint_offline(secrets, "linux/amd64");
    let place = |d: &Diagnostic| -> String {
        let file = files
            .iter()
            .find(|f| workflow_name(f) == d.config)
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| {
                if d.config == SUBMISSION {
                    "(files)".into()
                } else {
                    d.config.clone()
                }
            });
        match (d.line, d.column) {
            (Some(line), Some(column)) => format!("{file}:{line}:{column}"),
            _ if d.pointer.is_empty() => file,
            _ => format!("{file}:{}", d.pointer),
        }
    };
    for w in &report.warnings {
        println!("{}: warning: {}", place(w), w.message);
    }
    for e in &report.errors {
        println!("{}: {}", place(e), e.message);
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
