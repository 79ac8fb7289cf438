//! README.md's settings tables, held to the declarations: every setting a command takes
//! (`PICULET_*`) has a row in a table with a `default` column, under its name and with its
//! declared default; a table with a flag column states its flag, and the Kubernetes table,
//! which restates the declarations whole, their TOML key and help too. No row names a setting
//! that does not exist, and no mention anywhere in README.md does either.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;

const README: &str = include_str!("../../README.md");

/// A setting as declared on its field.
#[derive(Debug)]
struct Declared {
    /// The `default_value`, else the `[default: …]` its help ends with, else `none`.
    default: String,
    flag: String,
    /// The field's name: its key in the TOML file.
    key: String,
    /// The help, without a `[default: …]`.
    help: String,
}

/// Every `PICULET_*` setting of every command, by variable.
fn declared() -> BTreeMap<String, Declared> {
    let mut settings = BTreeMap::new();
    let cli = crate::cli::Cli::command();
    for arg in cli.get_subcommands().flat_map(clap::Command::get_arguments) {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if !env.starts_with("PICULET_") {
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let (help, described) = match help
            .trim_end()
            .strip_suffix(']')
            .and_then(|h| h.rsplit_once(" [default: "))
        {
            Some((help, default)) => (help.to_string(), Some(default.to_string())),
            None => (help, None),
        };
        let value = arg
            .get_default_values()
            .first()
            .map(|d| d.to_string_lossy().into_owned());
        assert!(
            described.is_none() || value.is_none(),
            "{env} has a default_value and a [default: …] in its help; keep one"
        );
        let setting = Declared {
            default: value.or(described).unwrap_or_else(|| "none".to_string()),
            flag: format!("--{}", arg.get_long().unwrap_or_default()),
            key: arg.get_id().to_string(),
            help,
        };
        // `--config` is an argument of several commands, with a help of each's own.
        if let Some(other) = settings.get(env) {
            let other: &Declared = other;
            assert_eq!(other.default, setting.default, "{env} has two defaults");
            continue;
        }
        settings.insert(env.to_string(), setting);
    }
    settings
}

/// A table row of README.md that names settings.
#[derive(Debug, PartialEq)]
struct Row {
    line: usize,
    /// Each setting the row names, with the default it states for it.
    settings: Vec<(String, String)>,
    /// The other columns the row has: `flag`, `TOML key`, `meaning`.
    columns: BTreeMap<&'static str, String>,
}

/// The cells of a table row, trimmed.
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// A cell's text as the declarations write it: without code marks.
fn plain(cell: &str) -> String {
    cell.replace('`', "").trim().to_string()
}

/// `PICULET_` and upper-case letters, digits and `_`; not a prefix such as `PICULET_K8S_`.
fn is_setting_name(text: &str) -> bool {
    text.starts_with("PICULET_")
        && !text.ends_with('_')
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The rows of every table with a `setting` or `variable` column and a `default` column.
fn rows(readme: &str) -> Vec<Row> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut rows = Vec::new();
    // The columns of the table being read, by what they hold.
    let mut columns: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with('|') {
            columns.clear();
            continue;
        }
        if line.starts_with("|---") {
            continue;
        }
        let cells = cells(line);
        if lines
            .get(i + 1)
            .is_some_and(|next| next.starts_with("|---"))
        {
            columns.clear();
            for (at, header) in cells.iter().enumerate() {
                let holds = match *header {
                    "setting" | "variable" => "name",
                    "default" => "default",
                    "flag" => "flag",
                    "meaning" => "meaning",
                    h if h.starts_with("TOML key") => "TOML key",
                    _ => continue,
                };
                columns.insert(holds, at);
            }
            if !(columns.contains_key("name") && columns.contains_key("default")) {
                columns.clear();
            }
            continue;
        }
        if columns.is_empty() {
            continue;
        }
        let cell = |holds: &str| cells.get(columns[holds]).copied().unwrap_or_default();
        let names: Vec<String> = cell("name")
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| is_setting_name(n))
            .map(String::from)
            .collect();
        // Several settings in one row state their defaults in the same order.
        let defaults: Vec<String> = if names.len() > 1 {
            cell("default").split(", ").map(plain).collect()
        } else {
            vec![plain(cell("default"))]
        };
        if !names.is_empty() {
            rows.push(Row {
                line: i + 1,
                settings: names.into_iter().zip(defaults).collect(),
                columns: ["flag", "TOML key", "meaning"]
                    .into_iter()
                    .filter(|holds| columns.contains_key(holds))
                    .map(|holds| (holds, cell(holds).to_string()))
                    .collect(),
            });
        }
    }
    rows
}

#[test]
fn readme_tables_state_every_setting_as_declared() {
    let declared = declared();
    let rows = rows(README);
    // A set: a row naming no setting is also a mention of it, reported once.
    let mut wrong = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        let at = row.line;
        for (name, default) in &row.settings {
            let Some(setting) = declared.get(name) else {
                wrong.insert(format!(
                    "README.md:{at}: {name} is no setting of any command"
                ));
                continue;
            };
            listed.insert(name.as_str());
            if *default != setting.default {
                wrong.insert(format!(
                    "README.md:{at}: {name} defaults to {:?}, not {default:?}",
                    setting.default
                ));
            }
            if row.settings.len() > 1 {
                continue;
            }
            // The Kubernetes table restates the declaration whole (its meaning is the help).
            let restated = row.columns.contains_key("TOML key");
            for (holds, text) in &row.columns {
                let (want, got) = match *holds {
                    "flag" => (&setting.flag, plain(text)),
                    "TOML key" => (&setting.key, plain(text)),
                    "meaning" if restated => (&setting.help, text.clone()),
                    _ => continue,
                };
                if *want != got {
                    wrong.insert(format!(
                        "README.md:{at}: the {holds} of {name} is {want:?}, not {got:?}"
                    ));
                }
            }
        }
    }
    for (name, setting) in &declared {
        if !listed.contains(name.as_str()) {
            wrong.insert(format!(
                "README.md has no row for {name} (default {:?})",
                setting.default
            ));
        }
    }
    for (i, line) in README.lines().enumerate() {
        let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| is_setting_name(w)) {
            if !declared.contains_key(word) {
                wrong.insert(format!(
                    "README.md:{}: {word} is no setting of any command",
                    i + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The tables this holds: Configuration, Limits, Kubernetes settings, the client's.
    assert!(rows.len() > 100, "{} rows", rows.len());
}

#[test]
fn rows_are_read_with_their_defaults() {
    let readme = "\
| variable | flag | TOML key | meaning | default |
|---|---|---|---|---|
| `PICULET_A` | `--a` | `a` | the a | `1` |
| `PICULET_B`, `PICULET_C` | | | b and c | `2`, none |
| `PICULET_MAX_*` | | | see below | see below |

| setting | meaning |
|---|---|
| `PICULET_D` | no default column |
";
    let pair = |n: &str, d: &str| (n.to_string(), d.to_string());
    let columns = |flag: &str, key: &str, meaning: &str| {
        BTreeMap::from([
            ("flag", flag.to_string()),
            ("TOML key", key.to_string()),
            ("meaning", meaning.to_string()),
        ])
    };
    assert_eq!(
        rows(readme),
        [
            Row {
                line: 3,
                settings: vec![pair("PICULET_A", "1")],
                columns: columns("`--a`", "`a`", "the a"),
            },
            Row {
                line: 4,
                settings: vec![pair("PICULET_B", "2"), pair("PICULET_C", "none")],
                columns: columns("", "", "b and c"),
            },
        ]
    );
}
