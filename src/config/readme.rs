//! README.md's settings tables, held to the declarations: every setting a command takes
//! (`PICULET_*`) has a row in a table with a `default` column, under its name and with its
//! declared default; no row names a setting that does not exist, and no mention anywhere in
//! README.md does either.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;

const README: &str = include_str!("../../README.md");

/// The default of every `PICULET_*` setting of every command, as its declaration gives it: the
/// `default_value`, else the `[default: …]` its help ends with, else `none`.
fn declared() -> BTreeMap<String, String> {
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
        let described = help
            .trim_end()
            .strip_suffix(']')
            .and_then(|h| h.rsplit_once("[default: "))
            .map(|(_, d)| d.to_string());
        let value = arg
            .get_default_values()
            .first()
            .map(|d| d.to_string_lossy().into_owned());
        assert!(
            described.is_none() || value.is_none(),
            "{env} has a default_value and a [default: …] in its help; keep one"
        );
        let default = value.or(described).unwrap_or_else(|| "none".to_string());
        if let Some(other) = settings.insert(env.to_string(), default.clone()) {
            assert_eq!(other, default, "{env} is declared with two defaults");
        }
    }
    settings
}

/// A table row of README.md that names settings, with the default it states for each.
struct Row {
    line: usize,
    settings: Vec<(String, String)>,
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
    // The name and default columns of the table being read.
    let mut columns: Option<(usize, usize)> = None;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with('|') {
            columns = None;
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
            let name = cells
                .iter()
                .position(|c| *c == "setting" || *c == "variable");
            let default = cells.iter().position(|c| *c == "default");
            columns = name.zip(default);
            continue;
        }
        let Some((name, default)) = columns else {
            continue;
        };
        let (Some(names), Some(defaults)) = (cells.get(name), cells.get(default)) else {
            continue;
        };
        let names: Vec<String> = names
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| is_setting_name(n))
            .map(String::from)
            .collect();
        // Several settings in one row state their defaults in the same order.
        let defaults: Vec<String> = if names.len() > 1 {
            defaults.split(", ").map(plain).collect()
        } else {
            vec![plain(defaults)]
        };
        if !names.is_empty() {
            rows.push(Row {
                line: i + 1,
                settings: names.into_iter().zip(defaults).collect(),
            });
        }
    }
    rows
}

#[test]
fn readme_tables_state_every_setting_with_its_declared_default() {
    let declared = declared();
    let rows = rows(README);
    // A set: a row naming no setting is also a mention of it, reported once.
    let mut wrong = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        for (name, default) in &row.settings {
            match declared.get(name) {
                None => {
                    wrong.insert(format!(
                        "README.md:{}: {name} is no setting of any command",
                        row.line
                    ));
                }
                Some(want) => {
                    if want != default {
                        wrong.insert(format!(
                            "README.md:{}: {name} defaults to {want:?}, not {default:?}",
                            row.line
                        ));
                    }
                    listed.insert(name.as_str());
                }
            }
        }
    }
    for (name, default) in &declared {
        if !listed.contains(name.as_str()) {
            wrong.insert(format!(
                "README.md has no row for {name} (default {default:?})"
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
| variable | flag | meaning | default |
|---|---|---|---|
| `PICULET_A` | `--a` | the a | `1` |
| `PICULET_B`, `PICULET_C` | | b and c | `2`, none |
| `PICULET_MAX_*` | | see below | see below |

| setting | meaning |
|---|---|
| `PICULET_D` | no default column |
";
    let rows: Vec<(usize, Vec<(String, String)>)> = rows(readme)
        .into_iter()
        .map(|r| (r.line, r.settings))
        .collect();
    let pair = |n: &str, d: &str| (n.to_string(), d.to_string());
    assert_eq!(
        rows,
        [
            (3, vec![pair("PICULET_A", "1")]),
            (4, vec![pair("PICULET_B", "2"), pair("PICULET_C", "none")]),
        ]
    );
}
