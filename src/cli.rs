//! The command line: `serve`, `migrate`, `openapi`, `lint`. Every failure ends with one
//! readable line on stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{
    Client, ClientError, parse_id, status_table, submission_from_files, workflow_name,
};
use crate::config::{Config, Settings, limits};
use crate::model::Status;
use crate::pipeline::{Diagnostic, Limits};
use crate::submission::SUBMISSION;

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

    /// The server the client commands (submit, logs, status, cancel) talk to
    #[arg(
        long,
        env = "PICULET_SERVER",
        global = true,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// The bearer token the client commands send
    #[arg(
        long,
        env = "PICULET_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

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
    /// Print, as YAML, the Kubernetes objects the pipeline files would create, with the
    /// administrator's policy (the --k8s-* settings) applied; offline
    Render {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The namespace the submission asks for
        #[arg(long = "namespace", value_name = "NAMESPACE")]
        namespace: Option<String>,
    },
    /// Submit pipeline files to the server; with --follow, print every step's log and exit 0
    /// only when the pipeline succeeded
    Submit {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Follow the pipeline: print every step's lines, prefixed by its name
        #[arg(long)]
        follow: bool,
    },
    /// Print a step's log; with --follow, until the step ends
    Logs {
        #[arg(value_name = "STEP_ID")]
        step: String,
        #[arg(long)]
        follow: bool,
    },
    /// Print a pipeline's status, its workflows and steps
    Status {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
    },
    /// Cancel a pipeline
    Cancel {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
    },
}

/// Pipeline files with the variables and secrets of their submission, as `submit` and
/// `render` take them.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Pipeline files (.woodpecker.yaml, .woodpecker/*.yaml, JSON); each is one workflow, named by its file stem
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A variable of the submission (repeatable)
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    vars: Vec<(String, String)>,
    /// A secret of the submission (repeatable); its value is never shown
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = key_value)]
    secrets: Vec<(String, String)>,
}

impl PipelineArgs {
    fn submission(&self) -> Result<crate::submission::Submission, ClientError> {
        submission_from_files(&self.files, &self.vars, &self.secrets)
    }
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

fn settings(cli: &Cli) -> Result<Settings, String> {
    match &cli.config {
        Some(path) => cli
            .settings
            .clone()
            .with_file(path)
            .map_err(|e| e.to_string()),
        None => Ok(cli.settings.clone()),
    }
}

fn config(cli: &Cli) -> Result<Config, String> {
    Config::from_settings(&settings(cli)?).map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

/// Runs a client command; exit 0 on success, 1 when a followed pipeline did not succeed.
fn client_command(cli: &Cli) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = Client::new(&cli.server, cli.token.clone());
    let result: Result<ExitCode, ClientError> = runtime.block_on(async {
        match &cli.command {
            Command::Submit { pipeline, follow } => {
                let submission = pipeline.submission()?;
                let pipeline = client.submit(&submission).await?;
                eprintln!("piculet: submitted pipeline {}", pipeline.summary.id);
                if !follow {
                    println!("{}", pipeline.summary.id);
                    return Ok(ExitCode::SUCCESS);
                }
                let status = client.follow(&pipeline).await?;
                let done = client.pipeline(pipeline.summary.id).await?;
                eprint!("{}", status_table(&done));
                Ok(if status == Status::Success {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            Command::Logs { step, follow } => {
                let status = client.print_log(parse_id(step)?, *follow, "").await?;
                Ok(match status {
                    Some(s) if s != Status::Success => ExitCode::from(1),
                    _ => ExitCode::SUCCESS,
                })
            }
            Command::Status { pipeline } => {
                print!(
                    "{}",
                    status_table(&client.pipeline(parse_id(pipeline)?).await?)
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Cancel { pipeline } => {
                let p = client.cancel(parse_id(pipeline)?).await?;
                println!("{}: {}", p.summary.id, p.summary.status);
                Ok(ExitCode::SUCCESS)
            }
            _ => Ok(ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(fail)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Submit { .. }
        | Command::Logs { .. }
        | Command::Status { .. }
        | Command::Cancel { .. } => client_command(&cli),
        Command::Openapi => {
            print!("{}", crate::api::openapi::document());
            ExitCode::SUCCESS
        }
        Command::Lint {
            files,
            vars,
            secrets,
        } => match settings(&cli).and_then(|s| limits(&s).map_err(|e| e.to_string())) {
            Ok(limits) => lint(files, vars, secrets, &limits),
            Err(e) => fail(e),
        },
        Command::Render {
            pipeline,
            namespace,
        } => match config(&cli) {
            Ok(config) => render(&config, pipeline, namespace.clone()),
            Err(e) => fail(e),
        },
        Command::Serve | Command::Migrate => {
            let config = match config(&cli) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            crate::telemetry::init(config.log_format, &config.log);
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let result = runtime.block_on(async {
                match cli.command {
                    Command::Serve => crate::server::serve(config)
                        .await
                        .map_err(|e| e.to_string()),
                    Command::Migrate => migrate(&config).await,
                    _ => Ok(()),
                }
            });
            // Blocking tasks still reading the pipes of steps left for adoption must not hold
            // the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
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

fn render(config: &Config, args: &PipelineArgs, namespace: Option<String>) -> ExitCode {
    let files = &args.files;
    let mut submission = match args.submission() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    submission.namespace = namespace;
    match crate::dry_run::render(
        &submission,
        &config.platform,
        &config.limits,
        &config.kubernetes,
    ) {
        Ok(rendered) => {
            let mut out = String::new();
            for w in &rendered.workflows {
                for object in &w.objects {
                    out.push_str("---\n");
                    out.push_str(&serde_saphyr::to_string(object).unwrap_or_default());
                }
            }
            print!("{out}");
            for d in &rendered.warnings {
                eprintln!("{}: warning: {}", diagnostic_place(files, d), d.message);
            }
            ExitCode::SUCCESS
        }
        Err(crate::dry_run::Refusal::Invalid(report)) => {
            for d in &report.errors {
                println!("{}: {}", diagnostic_place(files, d), d.message);
            }
            ExitCode::from(1)
        }
        Err(crate::dry_run::Refusal::Policy(violations)) => {
            for v in &violations {
                println!("policy: {}", v.message);
            }
            ExitCode::from(1)
        }
    }
}

/// `file:line:column` (or `file:pointer`) of a diagnostic.
fn diagnostic_place(files: &[PathBuf], d: &Diagnostic) -> String {
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
}

fn lint(
    files: &[PathBuf],
    vars: &[(String, String)],
    secrets: &[String],
    limits: &Limits,
) -> ExitCode {
    let submission = match submission_from_files(files, vars, &[]) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let report = submission.lint_offline(secrets, "linux/amd64", limits);
    let place = |d: &Diagnostic| diagnostic_place(files, d);
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
