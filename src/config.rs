//! Configuration: every setting piculet reads, from flags, `PICULET_*` environment variables
//! and an optional TOML file, turned once into a typed [`Config`].
//!
//! Precedence is flag > environment > file > default. Every value is read as text and parsed
//! here, so that a bad value stops start-up with one line naming the setting (its flag and its
//! environment variable) and what is wrong with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};

use crate::api::host::HostPattern;
use crate::k8s::{KubernetesConfig, KubernetesSettings, SettingError};
use crate::pipeline::Limits;
use crate::store::{PoolSettings, Timeouts};

/// A configuration error: names the setting and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid { setting: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Kubernetes(#[from] SettingError),
}

/// The raw settings, as flags and environment variables. Each is declared once, here: its
/// name, its help and its default (`default_value`, which `--help` shows and the parser falls
/// back to; a default that depends on other settings is described in the help as
/// `[default: …]` and computed by the parser). README.md's tables are tested against these
/// declarations.
///
/// Every field is optional text: the TOML file may fill what flags and environment leave
/// empty (see [`Settings::without_defaults`]), and [`Config::from_settings`] parses and checks
/// them all.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to serve on
    #[arg(
        long,
        env = "PICULET_LISTEN",
        global = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: Option<String>,

    /// postgres://… or sqlite://… [default: SQLite file piculet.db in the data directory]
    #[arg(long, env = "PICULET_DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Directory for the embedded database, the secret key and workspaces
    #[arg(
        long,
        env = "PICULET_DATA_DIR",
        global = true,
        value_name = "DIR",
        default_value = "./piculet-data"
    )]
    pub data_dir: Option<String>,

    /// Where steps run: local or kubernetes
    #[arg(
        long,
        env = "PICULET_BACKEND",
        global = true,
        value_name = "NAME",
        default_value = "local"
    )]
    pub backend: Option<String>,

    /// Comma-separated bearer tokens accepted by the API; with none, only loopback is served
    #[arg(
        long,
        env = "PICULET_API_TOKENS",
        global = true,
        value_name = "TOKENS",
        hide_env_values = true
    )]
    pub api_tokens: Option<String>,

    /// Workflows this replica runs at once
    #[arg(
        long,
        env = "PICULET_MAX_WORKFLOWS",
        global = true,
        value_name = "N",
        default_value = "4"
    )]
    pub max_workflows: Option<String>,

    /// Default platform of a workflow
    #[arg(
        long,
        env = "PICULET_PLATFORM",
        global = true,
        value_name = "OS/ARCH",
        default_value = "linux/amd64"
    )]
    pub platform: Option<String>,

    /// Largest request body accepted, in bytes or with a unit (512KiB, 4MiB)
    #[arg(
        long,
        env = "PICULET_MAX_BODY_SIZE",
        global = true,
        value_name = "SIZE",
        default_value = "4MiB"
    )]
    pub max_body_size: Option<String>,

    /// Longest a client may take to send a whole request body; one that trickles is answered
    /// 408
    #[arg(
        long,
        env = "PICULET_BODY_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub body_timeout: Option<String>,

    /// Requests parsed, validated, planned or rendered at once (lint, render, submit, retry);
    /// more wait for a slot [default: the number of CPUs]
    #[arg(long, env = "PICULET_MAX_PLANNING", global = true, value_name = "N")]
    pub max_planning: Option<String>,

    /// How long a request waits for a planning slot before it is refused with 503
    #[arg(
        long,
        env = "PICULET_PLANNING_QUEUE_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub planning_queue_timeout: Option<String>,

    /// Comma-separated host names (`*.example.com` for the names under one) answered besides
    /// the loopback names; without API tokens only those are answered, with tokens any name
    /// unless this is set
    #[arg(
        long,
        env = "PICULET_ALLOWED_HOSTS",
        global = true,
        value_name = "HOSTS"
    )]
    pub allowed_hosts: Option<String>,

    /// Base64 of 32 bytes that encrypt stored secret values; every replica needs the same one
    /// [default: generated once into DATA_DIR/secret.key]
    #[arg(
        long,
        env = "PICULET_SECRET_KEY",
        global = true,
        value_name = "BASE64",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,

    /// The longest any step or pipeline may run, whatever it asks for
    #[arg(
        long,
        env = "PICULET_MAX_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "24h"
    )]
    pub max_timeout: Option<String>,

    /// Between asking a canceled or timed-out step to stop and killing it
    #[arg(
        long,
        env = "PICULET_GRACE_PERIOD",
        global = true,
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub grace_period: Option<String>,

    /// Most log bytes stored per step; the rest is cut with a visible notice
    #[arg(
        long,
        env = "PICULET_MAX_LOG_SIZE",
        global = true,
        value_name = "SIZE",
        default_value = "128MiB"
    )]
    pub max_log_size: Option<String>,

    /// How long a replica's claim on a workflow lasts without renewal; another replica takes
    /// the workflow over after that
    #[arg(
        long,
        env = "PICULET_LEASE",
        global = true,
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub lease: Option<String>,

    /// On SIGTERM, how long running workflows go on before they are handed over to another
    /// replica (their steps keep running); a second signal hands them over at once
    #[arg(
        long,
        env = "PICULET_SHUTDOWN_GRACE",
        global = true,
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub shutdown_grace: Option<String>,

    /// How many times a step is started, its first attempt included, when a replica dies with
    /// its attempts; then it ends as error
    #[arg(
        long,
        env = "PICULET_MAX_ATTEMPTS",
        global = true,
        value_name = "N",
        default_value = "3"
    )]
    pub max_attempts: Option<String>,
    /// How long a replica's feed listener (Postgres) may hear nothing before it checks its
    /// connection; a listener silent for twice this reconnects
    #[arg(
        long,
        env = "PICULET_FEED_HEARTBEAT",
        global = true,
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub feed_heartbeat: Option<String>,

    /// Connections of the API's database pool: what requests read and submit with
    /// [default: 16 on Postgres, 8 on SQLite]
    #[arg(
        long,
        env = "PICULET_DB_API_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub db_api_connections: Option<String>,

    /// Connections of the engine's database pool, which API requests cannot take: claims,
    /// lease renewals, step changes and log lines [default: 2 × MAX_WORKFLOWS + 2, at most 32]
    #[arg(
        long,
        env = "PICULET_DB_ENGINE_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub db_engine_connections: Option<String>,

    /// Longest a database read may take (lists, gets, log and event pages); past it the
    /// request is answered 503 and the statement stopped
    #[arg(
        long,
        env = "PICULET_DB_READ_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub db_read_timeout: Option<String>,

    /// Longest a database write may take (submissions, cancels, everything the engine
    /// records)
    #[arg(
        long,
        env = "PICULET_DB_WRITE_TIMEOUT",
        global = true,
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub db_write_timeout: Option<String>,

    /// Most `label=` filters one list request may have
    #[arg(
        long,
        env = "PICULET_MAX_LABEL_FILTERS",
        global = true,
        value_name = "N",
        default_value = "16"
    )]
    pub max_label_filters: Option<String>,

    /// Log format: text or json
    #[arg(
        long,
        env = "PICULET_LOG_FORMAT",
        global = true,
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: Option<String>,

    /// Log filter, as tracing's EnvFilter reads it
    #[arg(
        long,
        env = "PICULET_LOG",
        global = true,
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log: Option<String>,

    /// Most steps, services and clone steps in one workflow (one matrix element)
    #[arg(
        long,
        env = "PICULET_MAX_STEPS_PER_WORKFLOW",
        global = true,
        value_name = "N",
        default_value = "256"
    )]
    pub max_steps_per_workflow: Option<String>,

    /// Most workflows in one pipeline: its configs times their matrix elements
    #[arg(
        long,
        env = "PICULET_MAX_WORKFLOWS_PER_PIPELINE",
        global = true,
        value_name = "N",
        default_value = "100"
    )]
    pub max_workflows_per_pipeline: Option<String>,

    /// Most steps, services and clone steps in one pipeline, over all its workflows
    #[arg(
        long,
        env = "PICULET_MAX_STEPS_PER_PIPELINE",
        global = true,
        value_name = "N",
        default_value = "2000"
    )]
    pub max_steps_per_pipeline: Option<String>,

    /// Most depends_on entries (of steps and workflows) in one pipeline
    #[arg(
        long,
        env = "PICULET_MAX_DEPENDENCIES",
        global = true,
        value_name = "N",
        default_value = "10000"
    )]
    pub max_dependencies: Option<String>,

    /// How deep maps and lists may nest in a pipeline config
    #[arg(
        long,
        env = "PICULET_MAX_NESTING_DEPTH",
        global = true,
        value_name = "N",
        default_value = "32"
    )]
    pub max_nesting_depth: Option<String>,

    /// Longest single string of a submission (a command, name, key, value, label, variable),
    /// in bytes or with a unit
    #[arg(
        long,
        env = "PICULET_MAX_STRING_LENGTH",
        global = true,
        value_name = "SIZE",
        default_value = "64KiB"
    )]
    pub max_string_length: Option<String>,

    /// Most labels on one submission
    #[arg(
        long,
        env = "PICULET_MAX_LABELS",
        global = true,
        value_name = "N",
        default_value = "64"
    )]
    pub max_labels: Option<String>,

    /// Most events one pipeline can record over its run (3, plus 2 per workflow, plus 2 per
    /// step and service)
    #[arg(
        long,
        env = "PICULET_MAX_EVENTS_PER_PIPELINE",
        global = true,
        value_name = "N",
        default_value = "20000"
    )]
    pub max_events_per_pipeline: Option<String>,

    /// Most bytes of text in a planned pipeline: every string of every workflow and matrix
    /// element after ${NAME} substitution
    #[arg(
        long,
        env = "PICULET_MAX_PLANNED_SIZE",
        global = true,
        value_name = "SIZE",
        default_value = "16MiB"
    )]
    pub max_planned_size: Option<String>,

    /// Most bytes of secret values and registry passwords of one submission together
    #[arg(
        long,
        env = "PICULET_MAX_SECRET_SIZE",
        global = true,
        value_name = "SIZE",
        default_value = "128KiB"
    )]
    pub max_secret_size: Option<String>,

    /// Highest `concurrency` limit a workflow may declare
    #[arg(
        long,
        env = "PICULET_MAX_CONCURRENCY_LIMIT",
        global = true,
        value_name = "N",
        default_value = "1000"
    )]
    pub max_concurrency_limit: Option<String>,

    // Each group shown is a time series of its own in every scrape, hence the cap.
    /// Concurrency groups `/metrics` shows one by one (those with the most workflows running
    /// and waiting); the others are summed under group "(other)"
    #[arg(
        long,
        env = "PICULET_METRICS_CONCURRENCY_GROUPS",
        global = true,
        value_name = "N",
        default_value = "100"
    )]
    pub metrics_concurrency_groups: Option<String>,

    /// The Kubernetes settings (`--k8s-*`, `PICULET_K8S_*`; a `[kubernetes]` table in the file).
    #[command(flatten)]
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
}

/// Which database the store talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The typed configuration every part of piculet reads; built once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub data_dir: PathBuf,
    pub backend: BackendKind,
    pub api_tokens: BTreeSet<String>,
    pub max_workflows: usize,
    pub platform: String,
    pub max_body_size: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Parsing, validation, planning and rendering at once (see `api::cpu`).
    pub max_planning: usize,
    /// How long a request waits for one of those slots.
    pub planning_queue_timeout: Duration,
    /// Names answered besides loopback ones (see `api::host`).
    pub allowed_hosts: Vec<HostPattern>,
    pub secret_key: Option<[u8; 32]>,
    pub log_format: LogFormat,
    pub log: String,
    pub max_timeout: Duration,
    pub grace_period: Duration,
    pub max_log_size: usize,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub max_attempts: u32,
    /// See `store::notify`.
    pub feed_heartbeat: Duration,
    /// The API's database pool.
    pub db_api: PoolSettings,
    /// The engine's database pool.
    pub db_engine: PoolSettings,
    pub max_label_filters: usize,
    /// How many concurrency groups `/metrics` shows with labels of their own.
    pub metrics_concurrency_groups: usize,
    /// What one submission may ask for (`PICULET_MAX_*` of the pipeline format).
    pub limits: Limits,
    /// Rendering and policy of Kubernetes objects; read whatever the backend, since
    /// `POST /render` and `piculet render` show them anyway.
    pub kubernetes: KubernetesConfig,
}

/// The name a setting is known by in messages: its flag and its environment variable.
fn name(field: &str) -> String {
    format!(
        "--{} (PICULET_{})",
        field.replace('_', "-"),
        field.to_ascii_uppercase()
    )
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: name(field),
        message: message.into(),
    }
}

/// The defaults declared on the fields of [`Settings`], by field name.
static DEFAULTS: LazyLock<BTreeMap<String, String>> =
    LazyLock::new(|| declared_defaults(&Settings::augment_args(clap::Command::new("piculet"))));

/// The `default_value` of each argument of `command` that has one, by argument id (for a
/// derived struct, the field's name).
fn declared_defaults(command: &clap::Command) -> BTreeMap<String, String> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let default = arg.get_default_values().first()?.to_str()?;
            Some((arg.get_id().to_string(), default.to_string()))
        })
        .collect()
}

/// What the setting `field` says: its value, else its declared default. Only for a setting
/// that has one (were its declaration missing, every start-up would stop here, naming it).
pub fn given_or_default<'a>(
    field: &str,
    setting: &'a Option<String>,
) -> Result<&'a str, ConfigError> {
    setting
        .as_deref()
        .or_else(|| LazyLock::force(&DEFAULTS).get(field).map(String::as_str))
        .ok_or_else(|| invalid(field, "has no value and no default"))
}

impl Settings {
    /// Fills every setting left empty by flags and environment from the TOML file at `path`.
    pub fn with_file(self, path: &Path) -> Result<Settings, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let from_file: Settings = toml::from_str(&text)
            .map_err(|e| file_error(e.message().trim_end().replace('\n', " ")))?;
        Ok(self.or(from_file))
    }

    /// Unsets every value clap filled in from its declared default (`matches` are those the
    /// settings were parsed from), so that the TOML file can still set it: a declared default
    /// is the last resort, taken when the settings are parsed.
    pub fn without_defaults(self, matches: &ArgMatches) -> Settings {
        /// Sets `id` to null wherever it is a key: the Kubernetes settings are nested, and no
        /// two settings share an id (clap refuses that).
        fn unset(id: &str, into: &mut serde_json::Value) {
            if let Some(map) = into.as_object_mut() {
                if let Some(slot) = map.get_mut(id) {
                    *slot = serde_json::Value::Null;
                }
                map.values_mut().for_each(|nested| unset(id, nested));
            }
        }
        let mut settings = serde_json::to_value(&self).unwrap_or_default();
        for id in matches.ids() {
            if matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue) {
                unset(id.as_str(), &mut settings);
            }
        }
        serde_json::from_value(settings).unwrap_or(self)
    }

    /// Keeps every value set here and takes the rest from `fallback`.
    fn or(self, fallback: Settings) -> Settings {
        // Both sides serialize to maps of optional strings (the Kubernetes settings nested),
        // so one merge covers every field, including the ones added later.
        fn merge(mine: serde_json::Value, into: &mut serde_json::Value) {
            if let (serde_json::Value::Object(mine), Some(into)) = (mine, into.as_object_mut()) {
                for (key, value) in mine {
                    match into.get_mut(&key) {
                        Some(slot) if value.is_object() => merge(value, slot),
                        _ if value.is_null() => {}
                        _ => {
                            into.insert(key, value);
                        }
                    }
                }
            }
        }
        let mut merged = serde_json::to_value(fallback).unwrap_or_default();
        merge(serde_json::to_value(self).unwrap_or_default(), &mut merged);
        serde_json::from_value(merged).unwrap_or_default()
    }
}

/// Parses a size such as `4MiB`, `512KiB`, `1000000` or `2MB` into bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits.parse().map_err(|_| {
        format!("{text:?} is not a size; write bytes or a number with KiB, MiB or GiB")
    })?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Config {
    /// Parses and checks every setting; the first bad one is reported.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let listen = listen(s)?;
        let data_dir = PathBuf::from(given_or_default("data_dir", &s.data_dir)?);

        let database_url = database_url(s, &data_dir)?;
        let backend = backend(s)?;
        let api_tokens = api_tokens(s, listen)?;
        let max_workflows = max_workflows(s)?;
        let platform = platform(s)?;
        let max_body_size = parse_size(given_or_default("max_body_size", &s.max_body_size)?)
            .map_err(|m| invalid("max_body_size", m))?;
        if max_body_size < 1024 {
            return Err(invalid(
                "max_body_size",
                "must be at least 1KiB so that a pipeline fits",
            ));
        }

        let body_timeout = duration("body_timeout", &s.body_timeout)?;
        if body_timeout.is_zero() {
            return Err(invalid(
                "body_timeout",
                "must be more than 0s, or no body could arrive; write e.g. 60s",
            ));
        }

        let max_planning = max_planning(s)?;
        let planning_queue_timeout = duration("planning_queue_timeout", &s.planning_queue_timeout)?;
        let allowed_hosts =
            crate::api::host::parse_allowed_hosts(s.allowed_hosts.as_deref().unwrap_or(""))
                .map_err(|m| invalid("allowed_hosts", m))?;

        let secret_key = match s.secret_key.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(crate::secrets::parse_key(text).map_err(|m| invalid("secret_key", m))?)
            }
        };

        let log_format = log_format(s)?;
        let log = given_or_default("log", &s.log)?.to_string();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(invalid("log", format!("{log:?}: {e}")));
        }

        let max_timeout = duration("max_timeout", &s.max_timeout)?;
        let grace_period = duration("grace_period", &s.grace_period)?;
        let lease = duration("lease", &s.lease)?;
        if lease < Duration::from_secs(2) {
            return Err(invalid(
                "lease",
                "must be at least 2s, or renewals cannot keep up",
            ));
        }
        let shutdown_grace = duration("shutdown_grace", &s.shutdown_grace)?;
        if shutdown_grace > Duration::from_secs(3600) {
            return Err(invalid(
                "shutdown_grace",
                "must be at most 1h; a replica that takes longer to stop holds its work from \
                 the others",
            ));
        }
        let max_attempts = count("max_attempts", &s.max_attempts)?;
        let feed_heartbeat = duration("feed_heartbeat", &s.feed_heartbeat)?;
        if feed_heartbeat < Duration::from_millis(100) {
            return Err(invalid(
                "feed_heartbeat",
                "must be at least 100ms, or the listener checks its connection without pause",
            ));
        }
        let max_log_size = parse_size(given_or_default("max_log_size", &s.max_log_size)?)
            .map_err(|m| invalid("max_log_size", m))?;

        let (db_api, db_engine) = db_pools(s, &database_url, max_workflows)?;
        let max_label_filters = count("max_label_filters", &s.max_label_filters)? as usize;
        let metrics_concurrency_groups =
            count("metrics_concurrency_groups", &s.metrics_concurrency_groups)? as usize;

        let limits = limits(s)?;
        let kubernetes = KubernetesConfig::from_settings(&s.kubernetes)?;

        Ok(Config {
            kubernetes,
            db_api,
            db_engine,
            max_label_filters,
            metrics_concurrency_groups,
            limits,
            max_timeout,
            grace_period,
            max_log_size,
            lease,
            shutdown_grace,
            max_attempts,
            feed_heartbeat,
            listen,
            database_url,
            data_dir,
            backend,
            api_tokens,
            max_workflows,
            platform,
            max_body_size,
            body_timeout,
            max_planning,
            planning_queue_timeout,
            allowed_hosts,
            secret_key,
            log_format,
            log,
        })
    }
}

/// The address to listen on: IP:PORT.
fn listen(s: &Settings) -> Result<SocketAddr, ConfigError> {
    let listen_text = given_or_default("listen", &s.listen)?;
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("{listen_text:?} is not an address; write IP:PORT, e.g. 127.0.0.1:8080"),
        )
    })?;
    Ok(listen)
}

/// The database: Postgres, or SQLite (by default a file in the data directory).
fn database_url(s: &Settings, data_dir: &Path) -> Result<DatabaseUrl, ConfigError> {
    let database_url = match s.database_url.as_deref() {
        None | Some("") => DatabaseUrl::Sqlite(format!(
            "sqlite://{}",
            data_dir.join("piculet.db").display()
        )),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            DatabaseUrl::Postgres(url.to_string())
        }
        Some(url) if url.starts_with("sqlite:") => DatabaseUrl::Sqlite(url.to_string()),
        Some(url) => {
            return Err(invalid(
                "database_url",
                format!(
                    "{:?} is neither postgres://… nor sqlite://…",
                    redact_url(url)
                ),
            ));
        }
    };
    Ok(database_url)
}

fn backend(s: &Settings) -> Result<BackendKind, ConfigError> {
    let backend = match given_or_default("backend", &s.backend)? {
        "local" => BackendKind::Local,
        "kubernetes" => BackendKind::Kubernetes,
        other => {
            return Err(invalid(
                "backend",
                format!("{other:?} is not a backend; use local or kubernetes"),
            ));
        }
    };
    Ok(backend)
}

/// The API tokens: none only on a loopback address, each long enough not to be guessed.
fn api_tokens(s: &Settings, listen: SocketAddr) -> Result<BTreeSet<String>, ConfigError> {
    let api_tokens: BTreeSet<String> = s
        .api_tokens
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if let Some(short) = api_tokens.iter().find(|t| t.len() < 16) {
        return Err(invalid(
            "api_tokens",
            format!(
                "a token of {} characters is too easy to guess; use at least 16",
                short.len()
            ),
        ));
    }
    if api_tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(invalid(
            "listen",
            format!(
                "{listen} is not a loopback address and no API token is configured; set \
                 PICULET_API_TOKENS (e.g. to the output of `openssl rand -hex 32`) or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(api_tokens)
}

fn max_workflows(s: &Settings) -> Result<usize, ConfigError> {
    let max_workflows_text = given_or_default("max_workflows", &s.max_workflows)?;
    let max_workflows = match max_workflows_text.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => n,
        _ => {
            return Err(invalid(
                "max_workflows",
                format!("{max_workflows_text:?} is not a number from 1 to 10000"),
            ));
        }
    };
    Ok(max_workflows)
}

/// The platform pipelines run on by default: OS/ARCH.
fn platform(s: &Settings) -> Result<String, ConfigError> {
    let platform = given_or_default("platform", &s.platform)?.to_string();
    match platform.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => {}
        _ => {
            return Err(invalid(
                "platform",
                format!("{platform:?} is not OS/ARCH, e.g. linux/amd64"),
            ));
        }
    }
    Ok(platform)
}

/// How many submissions are planned at once: by default, one per core.
fn max_planning(s: &Settings) -> Result<usize, ConfigError> {
    let max_planning = match s.max_planning.as_deref() {
        None => std::thread::available_parallelism().map_or(1, usize::from),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "max_planning",
                    format!("{text:?} is not a number from 1 to 1024"),
                ));
            }
        },
    };
    Ok(max_planning)
}

fn log_format(s: &Settings) -> Result<LogFormat, ConfigError> {
    let log_format = match given_or_default("log_format", &s.log_format)? {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log_format",
                format!("{other:?} is not a log format; use text or json"),
            ));
        }
    };
    Ok(log_format)
}

/// The API's and the engine's database pools: their sizes and query time limits.
fn db_pools(
    s: &Settings,
    database_url: &DatabaseUrl,
    max_workflows: usize,
) -> Result<(PoolSettings, PoolSettings), ConfigError> {
    let timeouts = Timeouts {
        read: duration("db_read_timeout", &s.db_read_timeout)?,
        write: duration("db_write_timeout", &s.db_write_timeout)?,
    };
    for (field, value) in [
        ("db_read_timeout", timeouts.read),
        ("db_write_timeout", timeouts.write),
    ] {
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&value) {
            return Err(invalid(
                field,
                format!(
                    "{} is not from 1ms to 1h; every database query needs a time limit, and \
                     some time to run",
                    humantime::format_duration(value)
                ),
            ));
        }
    }
    let api_default = match database_url {
        DatabaseUrl::Postgres(_) => 16,
        // One writer at a time: more connections would only wait on each other.
        DatabaseUrl::Sqlite(_) => 8,
    };
    // A workflow's lease keeper and the log writer of a step running beside it, plus
    // claims and the reaper; bounded, since every replica's pools share the server's
    // connection limit.
    let engine_default = (2 * max_workflows + 2).min(32) as u32;
    let db_api = PoolSettings {
        connections: match s.db_api_connections {
            None => api_default,
            Some(_) => count("db_api_connections", &s.db_api_connections)?,
        },
        timeouts,
    };
    let db_engine = PoolSettings {
        connections: match s.db_engine_connections {
            None => engine_default,
            Some(_) => count("db_engine_connections", &s.db_engine_connections)?,
        },
        timeouts,
    };
    Ok((db_api, db_engine))
}

/// A duration setting, its default when not given.
fn duration(field: &str, value: &Option<String>) -> Result<Duration, ConfigError> {
    parse_duration(given_or_default(field, value)?).map_err(|m| invalid(field, m))
}

/// `PICULET_MAX_LABEL_FILTERS` unless set; the API document states it as `label`'s `maxItems`.
pub fn default_max_label_filters() -> usize {
    count("max_label_filters", &None).map_or(0, |n| n as usize)
}

/// A count setting from 1 to 1000.
fn count(field: &str, setting: &Option<String>) -> Result<u32, ConfigError> {
    let text = given_or_default(field, setting)?;
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(invalid(
            field,
            format!("{text:?} is not a number from 1 to 1000"),
        )),
    }
}

/// The limits of the pipeline format, from their settings; also read alone by the offline
/// `piculet lint`, which needs no other setting.
pub fn limits(s: &Settings) -> Result<Limits, ConfigError> {
    // The upper bounds only catch typos; the nesting depth is bounded by the stack, since
    // the reader goes one call deeper per level.
    let count = |field: &str, setting: &Option<String>, min: usize, max: usize| {
        let text = given_or_default(field, setting)?;
        match text.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(
                field,
                format!("{text:?} is not a number from {min} to {max}"),
            )),
        }
    };
    let size = |field: &str, setting: &Option<String>| {
        let text = given_or_default(field, setting)?;
        let n = parse_size(text).map_err(|m| invalid(field, m))?;
        if !(256..=1 << 30).contains(&n) {
            return Err(invalid(
                field,
                format!("{text:?} is not a size from 256 bytes to 1GiB"),
            ));
        }
        Ok(n)
    };
    let string_length = size("max_string_length", &s.max_string_length)?;
    Ok(Limits {
        steps_per_workflow: count(
            "max_steps_per_workflow",
            &s.max_steps_per_workflow,
            1,
            1_000_000,
        )?,
        workflows_per_pipeline: count(
            "max_workflows_per_pipeline",
            &s.max_workflows_per_pipeline,
            1,
            1_000_000,
        )?,
        steps_per_pipeline: count(
            "max_steps_per_pipeline",
            &s.max_steps_per_pipeline,
            1,
            10_000_000,
        )?,
        dependencies: count("max_dependencies", &s.max_dependencies, 0, 100_000_000)?,
        nesting_depth: count(
            "max_nesting_depth",
            &s.max_nesting_depth,
            4,
            crate::pipeline::limits::MAX_NESTING_DEPTH,
        )?,
        string_length,
        labels: count("max_labels", &s.max_labels, 0, 1_000_000)?,
        // A pipeline of one step records up to 7 events.
        events_per_pipeline: count(
            "max_events_per_pipeline",
            &s.max_events_per_pipeline,
            7,
            1_000_000_000,
        )?,
        planned_bytes: size("max_planned_size", &s.max_planned_size)?,
        secret_bytes: size("max_secret_size", &s.max_secret_size)?,
        concurrency_limit: count(
            "max_concurrency_limit",
            &s.max_concurrency_limit,
            1,
            1_000_000,
        )?,
    })
}

/// Hides a password in a database URL before it goes into a message.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A duration setting such as `30s` or `10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 30s, 10m or 1h"))
}

#[cfg(test)]
mod readme;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::default()
    }

    #[test]
    fn defaults_are_embedded() {
        let c = Config::from_settings(&settings()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.database_url,
            DatabaseUrl::Sqlite("sqlite://./piculet-data/piculet.db".into())
        );
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.max_body_size, 4 << 20);
        assert!(c.max_planning >= 1);
        assert_eq!(c.planning_queue_timeout, Duration::from_secs(10));
        assert!(c.allowed_hosts.is_empty());
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.max_attempts, 3);
    }

    #[test]
    fn shutdown_grace_and_attempts() {
        let c = Config::from_settings(&Settings {
            shutdown_grace: Some("0s".into()),
            max_attempts: Some("1".into()),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.shutdown_grace, Duration::ZERO, "hand over at once");
        assert_eq!(c.max_attempts, 1, "never run again");
        for (s, message) in [
            (
                Settings {
                    shutdown_grace: Some("2h".into()),
                    ..settings()
                },
                "--shutdown-grace (PICULET_SHUTDOWN_GRACE): must be at most 1h; a replica that \
                 takes longer to stop holds its work from the others",
            ),
            (
                Settings {
                    max_attempts: Some("0".into()),
                    ..settings()
                },
                "--max-attempts (PICULET_MAX_ATTEMPTS): \"0\" is not a number from 1 to 1000",
            ),
        ] {
            assert_eq!(Config::from_settings(&s).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn planning_and_host_settings() {
        let c = Config::from_settings(&Settings {
            max_planning: Some("3".into()),
            planning_queue_timeout: Some("250ms".into()),
            allowed_hosts: Some("ci.example.com,*.example.org".into()),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.max_planning, 3);
        assert_eq!(c.planning_queue_timeout, Duration::from_millis(250));
        assert_eq!(c.allowed_hosts.len(), 2);
    }

    #[test]
    fn refuses_public_address_without_token() {
        let s = Settings {
            listen: Some("0.0.0.0:8080".into()),
            ..settings()
        };
        let e = Config::from_settings(&s).unwrap_err().to_string();
        assert!(e.starts_with("--listen (PICULET_LISTEN): 0.0.0.0:8080 is not a loopback address and no API token is configured; set PICULET_API_TOKENS"), "{e}");
        let s = Settings {
            listen: Some("0.0.0.0:8080".into()),
            api_tokens: Some("0123456789abcdef0123".into()),
            ..settings()
        };
        assert!(Config::from_settings(&s).is_ok());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                Settings {
                    listen: Some("nowhere".into()),
                    ..settings()
                },
                "--listen (PICULET_LISTEN): \"nowhere\" is not an address; write IP:PORT, e.g. 127.0.0.1:8080",
            ),
            (
                Settings {
                    backend: Some("docker".into()),
                    ..settings()
                },
                "--backend (PICULET_BACKEND): \"docker\" is not a backend; use local or kubernetes",
            ),
            (
                Settings {
                    max_workflows: Some("0".into()),
                    ..settings()
                },
                "--max-workflows (PICULET_MAX_WORKFLOWS): \"0\" is not a number from 1 to 10000",
            ),
            (
                Settings {
                    database_url: Some("mysql://u:pw@h/db".into()),
                    ..settings()
                },
                "--database-url (PICULET_DATABASE_URL): \"mysql://u:***@h/db\" is neither postgres://… nor sqlite://…",
            ),
            (
                Settings {
                    max_body_size: Some("3 parsecs".into()),
                    ..settings()
                },
                "--max-body-size (PICULET_MAX_BODY_SIZE): unknown unit \"parsecs\" in \"3 parsecs\"; use KiB, MiB or GiB",
            ),
            (
                Settings {
                    api_tokens: Some("short".into()),
                    ..settings()
                },
                "--api-tokens (PICULET_API_TOKENS): a token of 5 characters is too easy to guess; use at least 16",
            ),
            (
                Settings {
                    platform: Some("amd64".into()),
                    ..settings()
                },
                "--platform (PICULET_PLATFORM): \"amd64\" is not OS/ARCH, e.g. linux/amd64",
            ),
            (
                Settings {
                    log_format: Some("xml".into()),
                    ..settings()
                },
                "--log-format (PICULET_LOG_FORMAT): \"xml\" is not a log format; use text or json",
            ),
            (
                Settings {
                    body_timeout: Some("0s".into()),
                    ..settings()
                },
                "--body-timeout (PICULET_BODY_TIMEOUT): must be more than 0s, or no body could arrive; write e.g. 60s",
            ),
            (
                Settings {
                    max_planning: Some("0".into()),
                    ..settings()
                },
                "--max-planning (PICULET_MAX_PLANNING): \"0\" is not a number from 1 to 1024",
            ),
            (
                Settings {
                    planning_queue_timeout: Some("soon".into()),
                    ..settings()
                },
                "--planning-queue-timeout (PICULET_PLANNING_QUEUE_TIMEOUT): \"soon\" is not a duration (expected number at 0); write e.g. 30s, 10m or 1h",
            ),
            (
                Settings {
                    allowed_hosts: Some("ci.example.com, *".into()),
                    ..settings()
                },
                "--allowed-hosts (PICULET_ALLOWED_HOSTS): \"*\" would answer every name, which is what the check prevents; list the names",
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(Config::from_settings(&s).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn file_fills_what_flags_leave_empty() {
        let dir = std::env::temp_dir().join(format!("piculet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("piculet.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nbackend = \"kubernetes\"\n",
        )
        .unwrap();
        let s = Settings {
            backend: Some("local".into()),
            ..settings()
        }
        .with_file(&path)
        .unwrap();
        let c = Config::from_settings(&s).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.backend, BackendKind::Local, "a flag wins over the file");

        std::fs::write(&path, "lissen = \"127.0.0.1:9999\"\n").unwrap();
        let e = settings().with_file(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field `lissen`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Parsed as `serve` parses: clap fills in the declared defaults, which the file may
    /// still override; what a flag says, the file may not, even when it is the default.
    #[test]
    fn the_file_overrides_declared_defaults_but_not_flags() {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            settings: Settings,
        }
        let matches = Serve::command()
            .try_get_matches_from(["serve", "--max-timeout", "24h"])
            .unwrap();
        let parsed = Serve::from_arg_matches(&matches).unwrap().settings;
        assert_eq!(
            parsed.grace_period.as_deref(),
            Some("10s"),
            "clap's default"
        );
        let given = parsed.without_defaults(&matches);
        assert_eq!(given.grace_period, None);
        assert_eq!(given.kubernetes.namespace, None);
        assert_eq!(given.max_timeout.as_deref(), Some("24h"));

        let dir = std::env::temp_dir().join(format!("piculet-defaults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("piculet.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nmax_timeout = \"1h\"\n[kubernetes]\nnamespace = \"ci\"\n",
        )
        .unwrap();
        let c = Config::from_settings(&given.with_file(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.listen.port(), 9999, "the file over a default");
        assert_eq!(c.kubernetes.namespace, "ci", "also in [kubernetes]");
        assert_eq!(
            c.max_timeout,
            Duration::from_secs(24 * 3600),
            "a flag over the file"
        );
        assert_eq!(
            c.grace_period,
            Duration::from_secs(10),
            "the default, set nowhere"
        );
    }

    #[test]
    fn a_setting_read_without_a_declared_default_is_named() {
        assert_eq!(given_or_default("listen", &None).unwrap(), "127.0.0.1:8080");
        assert_eq!(given_or_default("listen", &Some("x".into())).unwrap(), "x");
        assert_eq!(
            given_or_default("secret_key", &None)
                .unwrap_err()
                .to_string(),
            "--secret-key (PICULET_SECRET_KEY): has no value and no default"
        );
    }

    #[test]
    fn database_pools_and_limits() {
        let c = Config::from_settings(&settings()).unwrap();
        assert_eq!(c.db_api.connections, 8, "SQLite: one writer at a time");
        assert_eq!(c.db_engine.connections, 10, "2 × 4 workflows + 2");
        assert_eq!(c.db_api.timeouts.read, Duration::from_secs(5));
        assert_eq!(c.db_engine.timeouts.write, Duration::from_secs(10));
        // The store's own defaults (what `Store::connect` uses) agree with the declared ones.
        assert_eq!(c.db_api.timeouts, Timeouts::default());
        assert_eq!(c.max_label_filters, 16);

        let s = Settings {
            database_url: Some("postgres://u@h/db".into()),
            max_workflows: Some("100".into()),
            db_read_timeout: Some("250ms".into()),
            ..settings()
        };
        let c = Config::from_settings(&s).unwrap();
        assert_eq!(c.db_api.connections, 16);
        assert_eq!(c.db_engine.connections, 32, "bounded by default");
        assert_eq!(c.db_engine.timeouts.read, Duration::from_millis(250));

        let s = Settings {
            db_api_connections: Some("3".into()),
            db_engine_connections: Some("5".into()),
            max_label_filters: Some("4".into()),
            ..settings()
        };
        let c = Config::from_settings(&s).unwrap();
        assert_eq!(
            (
                c.db_api.connections,
                c.db_engine.connections,
                c.max_label_filters
            ),
            (3, 5, 4)
        );
    }

    #[test]
    fn limits_default_and_parse() {
        // The declared defaults agree with the pipeline core's own (its tests and library
        // callers use those).
        let c = Config::from_settings(&settings()).unwrap();
        assert_eq!(c.limits, Limits::default());
        let s = Settings {
            max_steps_per_workflow: Some("500".into()),
            max_workflows_per_pipeline: Some("10".into()),
            max_steps_per_pipeline: Some("5000".into()),
            max_dependencies: Some("0".into()),
            max_nesting_depth: Some("64".into()),
            max_string_length: Some("1MiB".into()),
            max_labels: Some("0".into()),
            max_events_per_pipeline: Some("7".into()),
            max_planned_size: Some("4MiB".into()),
            max_secret_size: Some("1KiB".into()),
            max_concurrency_limit: Some("5".into()),
            ..settings()
        };
        assert_eq!(
            Config::from_settings(&s).unwrap().limits,
            Limits {
                steps_per_workflow: 500,
                workflows_per_pipeline: 10,
                steps_per_pipeline: 5000,
                dependencies: 0,
                nesting_depth: 64,
                string_length: 1 << 20,
                labels: 0,
                events_per_pipeline: 7,
                planned_bytes: 4 << 20,
                secret_bytes: 1024,
                concurrency_limit: 5,
            }
        );
    }

    #[test]
    fn bad_database_limits_name_the_setting() {
        let cases = [
            (
                Settings {
                    db_api_connections: Some("0".into()),
                    ..settings()
                },
                "--db-api-connections (PICULET_DB_API_CONNECTIONS): \"0\" is not a number from 1 to 1000",
            ),
            (
                Settings {
                    db_engine_connections: Some("many".into()),
                    ..settings()
                },
                "--db-engine-connections (PICULET_DB_ENGINE_CONNECTIONS): \"many\" is not a number from 1 to 1000",
            ),
            (
                Settings {
                    max_label_filters: Some("1001".into()),
                    ..settings()
                },
                "--max-label-filters (PICULET_MAX_LABEL_FILTERS): \"1001\" is not a number from 1 to 1000",
            ),
            (
                Settings {
                    db_read_timeout: Some("0s".into()),
                    ..settings()
                },
                "--db-read-timeout (PICULET_DB_READ_TIMEOUT): 0s is not from 1ms to 1h; every database query needs a time limit, and some time to run",
            ),
            (
                Settings {
                    db_write_timeout: Some("500us".into()),
                    ..settings()
                },
                "--db-write-timeout (PICULET_DB_WRITE_TIMEOUT): 500us is not from 1ms to 1h; every database query needs a time limit, and some time to run",
            ),
            (
                Settings {
                    db_write_timeout: Some("2h".into()),
                    ..settings()
                },
                "--db-write-timeout (PICULET_DB_WRITE_TIMEOUT): 2h is not from 1ms to 1h; every database query needs a time limit, and some time to run",
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(Config::from_settings(&s).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn bad_limits_name_the_setting() {
        let cases = [
            (
                Settings {
                    max_steps_per_workflow: Some("0".into()),
                    ..settings()
                },
                "--max-steps-per-workflow (PICULET_MAX_STEPS_PER_WORKFLOW): \"0\" is not a number from 1 to 1000000",
            ),
            (
                Settings {
                    max_workflows_per_pipeline: Some("many".into()),
                    ..settings()
                },
                "--max-workflows-per-pipeline (PICULET_MAX_WORKFLOWS_PER_PIPELINE): \"many\" is not a number from 1 to 1000000",
            ),
            (
                Settings {
                    max_nesting_depth: Some("1000".into()),
                    ..settings()
                },
                "--max-nesting-depth (PICULET_MAX_NESTING_DEPTH): \"1000\" is not a number from 4 to 256",
            ),
            (
                Settings {
                    max_string_length: Some("12".into()),
                    ..settings()
                },
                "--max-string-length (PICULET_MAX_STRING_LENGTH): \"12\" is not a size from 256 bytes to 1GiB",
            ),
            (
                Settings {
                    max_events_per_pipeline: Some("6".into()),
                    ..settings()
                },
                "--max-events-per-pipeline (PICULET_MAX_EVENTS_PER_PIPELINE): \"6\" is not a number from 7 to 1000000000",
            ),
            (
                Settings {
                    max_labels: Some("-1".into()),
                    ..settings()
                },
                "--max-labels (PICULET_MAX_LABELS): \"-1\" is not a number from 0 to 1000000",
            ),
            (
                Settings {
                    max_concurrency_limit: Some("0".into()),
                    ..settings()
                },
                "--max-concurrency-limit (PICULET_MAX_CONCURRENCY_LIMIT): \"0\" is not a number from 1 to 1000000",
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(Config::from_settings(&s).unwrap_err().to_string(), expected);
            assert_eq!(limits(&s).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn limits_come_from_the_file_too() {
        let dir = std::env::temp_dir().join(format!("piculet-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("piculet.toml");
        std::fs::write(&path, "max_steps_per_workflow = \"12\"\n").unwrap();
        let s = settings().with_file(&path).unwrap();
        assert_eq!(limits(&s).unwrap().steps_per_workflow, 12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("MiB").is_err());
    }
}
