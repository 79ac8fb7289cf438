//! The command line. Server commands (`serve`, `migrate`) take every server and Kubernetes
//! setting; the client commands (`submit`, `list`, `status`, `events`, `logs`, `cancel`,
//! `retry`) take only what a client needs; `lint` and `render` work offline and read the
//! server's settings from its environment variables and `--config` file, so that they check
//! what that server would. Every failure ends with one readable line on stderr and a non-zero
//! exit (see [`EXIT_CODES`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::client::{
    Client, ClientError, ListQuery, exit_code, output, parse_id, submission_from_files,
    workflow_name,
};
use crate::config::{Config, Settings, limits};
use crate::model::{Event, Pipeline, Status};
use crate::pipeline::Diagnostic;
use crate::submission::SUBMISSION;

/// The exit codes, for `--help` and the README.
pub const EXIT_CODES: &str = "Exit codes:
  0  success (and any command that did its work without waiting for a pipeline)
  1  the pipeline or step failed (failure, skipped); lint or render found errors
  2  the command could not do its work: bad usage, unreadable file, server unreachable,
     request refused
  3  the pipeline or step ended in error (piculet or the cluster could not run it)
  4  the pipeline or step was canceled
  5  the pipeline is still queued or running (status --exit-status)
Commands that wait for a pipeline or step (submit --follow, retry --follow, logs --follow)
and status or events with --exit-status exit with the code of its final status; cancel exits
0 once the cancel is recorded (and, with --wait, the pipeline has stopped).";

#[derive(Debug, Parser)]
#[command(
    name = "piculet",
    version,
    about = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes",
    long_about = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes, with \
                  status and live logs over REST and Server-Sent Events.\n\n`piculet serve` runs \
                  the service (`piculet serve --help` lists every setting); the other commands \
                  are its client and offline tools.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (and run pipelines) until SIGTERM or Ctrl-C
    #[command(
        long_about = "Serve the API (and run pipelines) until SIGTERM or Ctrl-C.\n\nEvery \
                      setting below can also be given as its PICULET_* environment variable or \
                      as a key of the TOML file named by --config (flag > environment > file > \
                      default)."
    )]
    Serve(ServerArgs),
    /// Apply the database migrations and exit
    Migrate(ServerArgs),
    /// Print the OpenAPI document
    Openapi,
    /// Validate pipeline files offline with the server's checks: exit 0 when valid, 1 with
    /// every error as file:line:column: message
    #[command(
        long_about = "Validate pipeline files offline with the checks the server makes \
                            on a submission of them: exit 0 when valid, 1 with every error as \
                            file:line:column: message.\n\nA from_secret naming a secret the \
                            submission would not carry is an error, as the server refuses it: \
                            name the secrets with --secret. The limits and the platform are the \
                            server's settings, read from PICULET_* variables and --config."
    )]
    Lint {
        /// Pipeline files (.woodpecker.yaml, .woodpecker/*.yaml, JSON); each is one workflow, named by its file stem
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A variable of the submission, as the server would get it (repeatable)
        #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
        vars: Vec<(String, String)>,
        /// A secret the submission carries, as `submit --secret` takes it; the value may be
        /// left out, only the name is checked (repeatable)
        #[arg(long = "secret", value_name = "NAME[=VALUE]", value_parser = secret_name)]
        secrets: Vec<(String, String)>,
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Print, as YAML, the Kubernetes objects the pipeline files would create, with the
    /// administrator's policy (PICULET_K8S_* settings and --config) applied; offline
    Render {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The namespace the submission asks for
        #[arg(long = "namespace", value_name = "NAMESPACE")]
        namespace: Option<String>,
        #[command(flatten)]
        offline: OfflineArgs,
    },
    /// Submit pipeline files; prints the pipeline's id, or with --follow its steps' lines
    #[command(after_help = EXIT_CODES)]
    Submit {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// A label of the pipeline, for `list --label` (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// The pipeline's name [default: the first file's path]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Submitting again with the same key returns the pipeline created the first time
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// The longest the whole pipeline may run, e.g. 30m or 1h
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Follow the pipeline: every step's lines prefixed by its name, each step's result and
        /// duration, a summary; exit with the pipeline's status
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List pipelines, newest first
    List {
        /// Only pipelines with these statuses (repeatable or comma-separated)
        #[arg(long = "status", value_name = "STATUS", value_delimiter = ',', value_parser = parse_status)]
        statuses: Vec<Status>,
        /// Only pipelines with this label (repeatable; all must match)
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Pipelines per page, 1 to 200
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        /// Start after this point: the cursor the previous page printed
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        /// Keep watching the newest page: print a row whenever a pipeline appears or changes
        /// status, until interrupted
        #[arg(long, short)]
        watch: bool,
        /// How often --watch asks the server
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
        interval: Duration,
        /// Print one JSON object per pipeline instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a pipeline's status, its workflows and steps, with their ids and durations
    #[command(after_help = EXIT_CODES)]
    Status {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
        /// Exit with the pipeline's status (0 success, 1 failure, 3 error, 4 canceled, 5 not
        /// finished), for scripts
        #[arg(long)]
        exit_status: bool,
        /// Print the pipeline as the API returns it, JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a pipeline's state changes (its workflows' and steps') until it ends
    #[command(after_help = EXIT_CODES)]
    Events {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
        /// Exit with the pipeline's final status instead of 0
        #[arg(long)]
        exit_status: bool,
        /// Print each event's JSON, one per line
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a step's log; with --follow, until the step ends
    #[command(after_help = EXIT_CODES)]
    Logs {
        #[arg(value_name = "STEP_ID")]
        step: String,
        /// Follow the log until the step ends; exit with the step's status
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a pipeline; prints its resulting state (canceling until its steps have stopped)
    #[command(after_help = EXIT_CODES)]
    Cancel {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
        /// Wait until the pipeline has stopped
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a pipeline again, as a new pipeline from the same submission; prints the new id
    #[command(after_help = EXIT_CODES)]
    Retry {
        #[arg(value_name = "PIPELINE_ID")]
        pipeline: String,
        /// Follow the new pipeline, as submit --follow does
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The settings of `serve` and `migrate`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A TOML file holding settings, keyed by their flag names with '_' (e.g. database_url)
    #[arg(long, env = "PICULET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,
}

/// Where the offline commands find the server's settings besides its environment variables.
#[derive(Debug, clap::Args)]
pub struct OfflineArgs {
    /// The server's TOML settings file, for its limits, platform and Kubernetes policy
    #[arg(long, env = "PICULET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What every client command takes: where the server is and how to show answers.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server to talk to
    #[arg(
        long,
        env = "PICULET_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// The bearer token to send
    #[arg(
        long,
        env = "PICULET_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Longest wait for an answer, and for the next byte of a followed stream (the server
    /// sends a keep-alive every 15s)
    #[arg(
        long,
        env = "PICULET_REQUEST_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration
    )]
    pub request_timeout: Duration,

    /// Colour: auto (on a terminal, unless NO_COLOR is set), always or never
    #[arg(long, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub color: String,
}

impl ClientArgs {
    fn client(&self) -> Result<Client, ClientError> {
        let choice = match self.color.as_str() {
            "always" => anstream::ColorChoice::Always,
            "never" => anstream::ColorChoice::Never,
            _ => anstream::ColorChoice::Auto,
        };
        choice.write_global();
        Client::new(&self.server, self.token.clone(), self.request_timeout)
    }
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

    /// The file a diagnostic's config came from.
    fn file_of(&self, config: &str) -> Option<String> {
        file_of(&self.files, config)
    }
}

fn file_of(files: &[PathBuf], config: &str) -> Option<String> {
    files
        .iter()
        .find(|f| workflow_name(f) == config)
        .map(|f| f.display().to_string())
        .or_else(|| (config == SUBMISSION).then(|| "(files)".to_string()))
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `NAME=VALUE` or `NAME` alone: `lint` checks names, and takes the values `submit` takes.
fn secret_name(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').unwrap_or((text, ""));
    if name.is_empty() {
        return Err(format!("{text:?} is not NAME or NAME=VALUE"));
    }
    Ok((name.to_string(), value.to_string()))
}

fn parse_status(text: &str) -> Result<Status, String> {
    Status::parse(text.trim()).ok_or_else(|| {
        format!(
            "{text:?} is not one of {}",
            Status::ALL.map(Status::as_str).join(", ")
        )
    })
}

fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{text:?} is not a duration such as 500ms, 30s or 2m"
        )),
    }
}

/// Prints one line and returns the exit code for a failure.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    anstream::eprintln!(
        "piculet: {}: {message}",
        output::paint(anstyle::AnsiColor::Red.on_default().bold(), "error")
    );
    ExitCode::from(2)
}

/// The server's settings as an offline command sees them: environment and `config` file.
fn offline_settings(config: Option<&Path>) -> Result<Settings, String> {
    /// Only the environment variables: clap reads them as it does for `serve`, so that both
    /// agree on every name.
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct FromEnv {
        #[command(flatten)]
        settings: Settings,
    }
    let first_line = |e: clap::Error| e.to_string().lines().next().unwrap_or_default().to_string();
    let matches = FromEnv::command()
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(first_line)?;
    let settings = FromEnv::from_arg_matches(&matches)
        .map_err(first_line)?
        .settings
        .without_defaults(&matches);
    match config {
        Some(path) => settings.with_file(path).map_err(|e| e.to_string()),
        None => Ok(settings),
    }
}

fn server_config(args: &ServerArgs) -> Result<Config, String> {
    let settings = match &args.config {
        Some(path) => args
            .settings
            .clone()
            .with_file(path)
            .map_err(|e| e.to_string())?,
        None => args.settings.clone(),
    };
    Config::from_settings(&settings).map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    if !matches!(cli.command, Command::Serve(_) | Command::Migrate(_)) {
        end_quietly_when_output_closes();
    }
    // The server's settings as given: what clap filled in from a default is left for the
    // config file to set, and taken only if it does not.
    if let (Command::Serve(args) | Command::Migrate(args), Some((_, given))) =
        (&mut cli.command, matches.subcommand())
    {
        args.settings = std::mem::take(&mut args.settings).without_defaults(given);
    }
    match cli.command {
        Command::Openapi => {
            print!("{}", crate::api::openapi::document());
            ExitCode::SUCCESS
        }
        Command::Lint {
            files,
            vars,
            secrets,
            offline,
        } => lint(&files, &vars, &secrets, &offline),
        Command::Render {
            pipeline,
            namespace,
            offline,
        } => match offline_settings(offline.config.as_deref())
            .and_then(|s| Config::from_settings(&s).map_err(|e| e.to_string()))
        {
            Ok(config) => render(&config, &pipeline, namespace),
            Err(e) => fail(e),
        },
        Command::Serve(args) => server_command(&args, true),
        Command::Migrate(args) => server_command(&args, false),
        client_command => {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(run_client(client_command)) {
                Ok(code) => code,
                Err(e) => client_failure(e, None),
            }
        }
    }
}

/// Lets a command whose output is piped into `head` (or a pager that quits) end as every Unix
/// tool does, killed by SIGPIPE, instead of panicking: Rust ignores SIGPIPE, so a write to a
/// closed pipe fails and `print!` panics on the failure. Not for `serve`, which must outlive
/// its clients' closed connections, nor for the steps it starts.
fn end_quietly_when_output_closes() {
    // Called first thing, before any other thread exists.
    sigpipe::reset();
}

/// Prints a client error: a refused submission's diagnostics first, one per line as `lint`
/// prints them, then the one line of the error.
fn client_failure(e: ClientError, files: Option<&[PathBuf]>) -> ExitCode {
    if let ClientError::Refused { errors, .. } = &e {
        let file_of = |config: &str| files.and_then(|f| file_of(f, config));
        for d in errors {
            anstream::eprintln!("{}: {}", output::place(d, &file_of), d.message);
        }
    }
    fail(e)
}

fn server_command(args: &ServerArgs, serve: bool) -> ExitCode {
    let config = match server_config(args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    crate::telemetry::init(config.log_format, &config.log);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        if serve {
            crate::server::serve(config)
                .await
                .map_err(|e| e.to_string())
        } else {
            migrate(&config).await
        }
    });
    // Blocking tasks still reading the pipes of steps left for adoption must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints the warnings the server attached to a pipeline, on stderr.
fn print_warnings(pipeline: &Pipeline, file_of: &dyn Fn(&str) -> Option<String>) {
    for w in &pipeline.warnings {
        anstream::eprintln!("{}", output::warning(w, file_of));
    }
}

/// Follows a pipeline to its end, prints its summary, and returns its exit code.
async fn follow(client: &Client, pipeline: &Pipeline) -> Result<ExitCode, ClientError> {
    let done = client.follow(pipeline).await?;
    anstream::eprint!("{}", output::status_table(&done, chrono::Utc::now()));
    Ok(ExitCode::from(exit_code(done.summary.status)))
}

async fn run_client(command: Command) -> Result<ExitCode, ClientError> {
    match command {
        Command::Submit {
            pipeline: args,
            labels,
            name,
            idempotency_key,
            timeout,
            follow: follow_it,
            client,
        } => {
            let client = client.client()?;
            let mut submission = args.submission()?;
            submission.labels = labels.into_iter().collect();
            if name.is_some() {
                submission.name = name;
            }
            submission.timeout = timeout;
            let pipeline = match client.submit(&submission, idempotency_key.as_deref()).await {
                Ok(p) => p,
                Err(e) => return Ok(client_failure(e, Some(&args.files))),
            };
            let file_of = |config: &str| args.file_of(config);
            print_warnings(&pipeline, &file_of);
            anstream::eprintln!("piculet: submitted pipeline {}", pipeline.summary.id);
            if !follow_it {
                println!("{}", pipeline.summary.id);
                return Ok(ExitCode::SUCCESS);
            }
            follow(&client, &pipeline).await
        }
        Command::Retry {
            pipeline,
            follow: follow_it,
            client,
        } => {
            let client = client.client()?;
            let pipeline = client.retry(parse_id(&pipeline)?).await?;
            print_warnings(&pipeline, &|_| None);
            anstream::eprintln!("piculet: retried as pipeline {}", pipeline.summary.id);
            if !follow_it {
                println!("{}", pipeline.summary.id);
                return Ok(ExitCode::SUCCESS);
            }
            follow(&client, &pipeline).await
        }
        Command::List {
            statuses,
            labels,
            limit,
            cursor,
            watch,
            interval,
            json,
            client,
        } => {
            let client = client.client()?;
            let query = ListQuery {
                statuses,
                labels,
                cursor,
                limit: Some(limit),
            };
            list(&client, &query, watch, interval, json).await
        }
        Command::Status {
            pipeline,
            exit_status,
            json,
            client,
        } => status(&client.client()?, pipeline, exit_status, json).await,
        Command::Events {
            pipeline,
            exit_status,
            json,
            client,
        } => events(&client.client()?, pipeline, exit_status, json).await,
        Command::Logs {
            step,
            follow: follow_it,
            client,
        } => logs(&client.client()?, step, follow_it).await,
        Command::Cancel {
            pipeline,
            wait,
            client,
        } => cancel(&client.client()?, pipeline, wait).await,
        Command::Serve(_)
        | Command::Migrate(_)
        | Command::Openapi
        | Command::Lint { .. }
        | Command::Render { .. } => Err(ClientError::Input("not a client command".to_string())),
    }
}

/// `piculet status`: the pipeline's table, or its JSON.
async fn status(
    client: &Client,
    pipeline: String,
    exit_status: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let p = client.pipeline(parse_id(&pipeline)?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
    } else {
        print_warnings(&p, &|_| None);
        anstream::print!("{}", output::status_table(&p, chrono::Utc::now()));
    }
    Ok(if exit_status {
        ExitCode::from(exit_code(p.summary.status))
    } else {
        ExitCode::SUCCESS
    })
}

/// `piculet events`: the pipeline's events to its end.
async fn events(
    client: &Client,
    pipeline: String,
    exit_status: bool,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let id = parse_id(&pipeline)?;
    let mut events = client.stream(format!("/pipelines/{id}/events"));
    let mut last = None;
    while let Some(event) = events.next().await? {
        if event.event == "end" {
            #[derive(serde::Deserialize)]
            struct End {
                status: Status,
            }
            last = serde_json::from_str::<End>(&event.data)
                .ok()
                .map(|e| e.status);
            break;
        }
        if json {
            println!("{}", event.data);
        } else if let Ok(e) = serde_json::from_str::<Event>(&event.data) {
            anstream::println!("{}", output::event_line(&e));
        }
    }
    let status = last.ok_or_else(|| {
        ClientError::Stream(format!("the events of pipeline {id} ended without an end"))
    })?;
    Ok(if exit_status {
        ExitCode::from(exit_code(status))
    } else {
        ExitCode::SUCCESS
    })
}

/// `piculet logs`: a step's log, or with `follow` its log to the step's end.
async fn logs(client: &Client, step: String, follow_it: bool) -> Result<ExitCode, ClientError> {
    let id = parse_id(&step)?;
    if !follow_it {
        client.print_log(id).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let end = client.follow_log(id, "").await?;
    if end.status != Status::Success {
        anstream::eprintln!(
            "piculet: step {id} {}{}",
            output::status(end.status, 0),
            output::outcome(end.status, end.exit_code, end.reason.as_deref())
                .map(|o| format!(": {o}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::from(exit_code(end.status)))
}

/// `piculet cancel`: records the cancel, and with `wait` waits for the pipeline's end.
async fn cancel(client: &Client, pipeline: String, wait: bool) -> Result<ExitCode, ClientError> {
    let id = parse_id(&pipeline)?;
    let p = client.cancel(id).await?;
    let status = p.summary.status;
    if status.is_finished() {
        anstream::println!("{id}: {}", output::status(status, 0));
        return Ok(ExitCode::SUCCESS);
    }
    // The cancel is recorded; the engine stops the running steps within the grace
    // period, and only then is the pipeline canceled.
    if !wait {
        anstream::println!("{id}: canceling");
        return Ok(ExitCode::SUCCESS);
    }
    anstream::eprintln!("piculet: {id}: canceling");
    let mut events = client.stream(format!("/pipelines/{id}/events"));
    while let Some(event) = events.next().await? {
        if event.event == "end" {
            break;
        }
    }
    let done = client.pipeline(id).await?;
    anstream::println!("{id}: {}", output::status(done.summary.status, 0));
    Ok(ExitCode::SUCCESS)
}

/// `piculet list`: one page, or with `watch` the newest page again every `interval`.
async fn list(
    client: &Client,
    query: &ListQuery,
    watch: bool,
    interval: Duration,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let page = client.list(query).await?;
    let now = chrono::Utc::now();
    let print = |p: &crate::model::PipelineSummary| {
        if json {
            println!("{}", serde_json::to_string(p).unwrap_or_default());
        } else {
            anstream::println!("{}", output::list_row(p, now));
        }
    };
    if !json {
        anstream::println!("{}", output::list_header());
    }
    for p in &page.items {
        print(p);
    }
    if !watch {
        if let Some(cursor) = &page.next_cursor {
            anstream::eprintln!("piculet: more pipelines: add --cursor {cursor}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // As `kubectl get --watch`: after the table, a row for each pipeline that appears or
    // changes. The newest page is what is watched; a cursor would pin it to the past.
    let mut seen: std::collections::HashMap<uuid::Uuid, Status> =
        page.items.iter().map(|p| (p.id, p.status)).collect();
    let newest = ListQuery {
        cursor: None,
        ..query.clone()
    };
    loop {
        tokio::time::sleep(interval).await;
        let page = client.list(&newest).await?;
        let now = chrono::Utc::now();
        // Oldest first, so that rows come in the order things happened.
        for p in page.items.iter().rev() {
            if seen.insert(p.id, p.status) != Some(p.status) {
                if json {
                    println!("{}", serde_json::to_string(p).unwrap_or_default());
                } else {
                    anstream::println!("{}", output::list_row(p, now));
                }
            }
        }
        // Bounded memory over a long watch: only what the current page can show again.
        if seen.len() > 4 * page.items.len().max(1) {
            let ids: std::collections::HashSet<_> = page.items.iter().map(|p| p.id).collect();
            seen.retain(|id, _| ids.contains(id));
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
    let mut submission = match args.submission() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    submission.namespace = namespace;
    let file_of = |config: &str| args.file_of(config);
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
                anstream::eprintln!("{}", output::warning(d, &file_of));
            }
            ExitCode::SUCCESS
        }
        Err(crate::dry_run::Refusal::Invalid(report)) => {
            for d in &report.errors {
                println!("{}: {}", output::place(d, &file_of), d.message);
            }
            ExitCode::from(1)
        }
        Err(crate::dry_run::Refusal::Policy(violations)) => {
            for v in &violations {
                println!("policy: {}", v.message);
            }
            ExitCode::from(1)
        }
        Err(crate::dry_run::Refusal::Kubernetes(violations)) => {
            for v in violations {
                let d = crate::dry_run::diagnostic(v);
                println!("{}: {}", output::place(&d, &file_of), d.message);
            }
            ExitCode::from(1)
        }
    }
}

/// `piculet lint`: the checks `POST /lint` makes on a submission of these files, offline.
fn lint(
    files: &[PathBuf],
    vars: &[(String, String)],
    secrets: &[(String, String)],
    offline: &OfflineArgs,
) -> ExitCode {
    let config = match offline_settings(offline.config.as_deref()).and_then(|s| {
        let limits = limits(&s).map_err(|e| e.to_string())?;
        // With a Kubernetes backend, the checks of its policy and of the API server too.
        let kubernetes = match s.backend.as_deref() {
            Some("kubernetes") => Some(
                crate::k8s::KubernetesConfig::from_settings(&s.kubernetes)
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok((
            limits,
            crate::config::given_or_default("platform", &s.platform)
                .map_err(|e| e.to_string())?
                .to_string(),
            kubernetes,
        ))
    }) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (limits, platform, kubernetes) = config;
    let submission = match submission_from_files(files, vars, secrets) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rules = crate::admission::Rules {
        platform: &platform,
        limits: &limits,
        kubernetes: kubernetes.as_ref(),
    };
    let report = crate::admission::lint(&submission, &rules);
    let file_of = |config: &str| file_of(files, config);
    let place = |d: &Diagnostic| output::place(d, &file_of);
    for w in &report.warnings {
        anstream::println!("{}", output::warning(w, &file_of));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn secrets_for_lint_take_a_name_with_or_without_a_value() {
        assert_eq!(secret_name("token"), Ok(("token".into(), String::new())));
        assert_eq!(
            secret_name("token=s3cr3t"),
            Ok(("token".into(), "s3cr3t".into()))
        );
        assert!(secret_name("=x").is_err());
    }
}
