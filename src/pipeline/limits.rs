//! The limits a submission must keep within, so that what one request costs (parsing, checks,
//! planning, rows, events) stays proportional to its size and bounded for the server. Every
//! refusal names the limit, the value found and the setting that raises it.

/// How much one submission may ask for. Each field has a `PICULET_MAX_*` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Steps, services and clone steps of one workflow (one matrix element).
    pub steps_per_workflow: usize,
    /// Workflows of a pipeline: its configs times their matrix elements.
    pub workflows_per_pipeline: usize,
    /// Steps, services and clone steps of the whole pipeline, as declared (before `when`).
    pub steps_per_pipeline: usize,
    /// `depends_on` entries (of steps and workflows) in the whole pipeline.
    pub dependencies: usize,
    /// How deep maps and lists may nest in a config.
    pub nesting_depth: usize,
    /// Bytes of any single string: a command, a name, a key, an environment value, a label, a
    /// variable, also after `${NAME}` substitution.
    pub string_length: usize,
    /// Labels of one submission.
    pub labels: usize,
    /// The most events the planned pipeline can record over its run.
    pub events_per_pipeline: usize,
    /// Bytes of text of the planned pipeline: every string and key of every workflow (each
    /// matrix element its own) after `${NAME}` substitution. Bounds what a short config that
    /// repeats a long variable, or a matrix that copies a large config, grows into.
    pub planned_bytes: usize,
    /// Bytes of all secret values and registry passwords of a submission together: masking
    /// builds an automaton over every encoded form of each.
    pub secret_bytes: usize,
    /// The highest `concurrency` limit a workflow may declare.
    pub concurrency_limit: usize,
}

/// The defaults of the `PICULET_MAX_*` settings, for planning without settings (tests,
/// library use); `config`'s tests hold them to the declared ones.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            steps_per_workflow: 256,
            workflows_per_pipeline: 100,
            steps_per_pipeline: 2000,
            dependencies: 10_000,
            nesting_depth: 32,
            string_length: 65_536,
            labels: 64,
            events_per_pipeline: 20_000,
            planned_bytes: 16 << 20,
            secret_bytes: 128 << 10,
            concurrency_limit: 1000,
        }
    }
}

/// The highest nesting depth a setting may allow: converting, merging and substituting a
/// tree recurse once per level, and this many levels fit in a 2 MiB thread stack with room
/// to spare (tested in `plan`).
pub const MAX_NESTING_DEPTH: usize = 256;

/// The longest concurrency group, and the longest `CI_REPO` that scopes one, in bytes. Not a
/// setting: the claim's index holds both in one Postgres B-tree entry, which holds at most
/// 2704 bytes, so a longer group would fail in the database instead of being refused.
pub const CONCURRENCY_GROUP_BYTES: usize = 1024;

/// The environment variable of each limit, as refusals name them.
pub const STEPS_PER_WORKFLOW: &str = "PICULET_MAX_STEPS_PER_WORKFLOW";
pub const WORKFLOWS_PER_PIPELINE: &str = "PICULET_MAX_WORKFLOWS_PER_PIPELINE";
pub const STEPS_PER_PIPELINE: &str = "PICULET_MAX_STEPS_PER_PIPELINE";
pub const DEPENDENCIES: &str = "PICULET_MAX_DEPENDENCIES";
pub const NESTING_DEPTH: &str = "PICULET_MAX_NESTING_DEPTH";
pub const STRING_LENGTH: &str = "PICULET_MAX_STRING_LENGTH";
pub const LABELS: &str = "PICULET_MAX_LABELS";
pub const EVENTS_PER_PIPELINE: &str = "PICULET_MAX_EVENTS_PER_PIPELINE";
pub const PLANNED_SIZE: &str = "PICULET_MAX_PLANNED_SIZE";
pub const SECRET_SIZE: &str = "PICULET_MAX_SECRET_SIZE";
pub const CONCURRENCY_LIMIT: &str = "PICULET_MAX_CONCURRENCY_LIMIT";

/// The end of every refusal: `more than the limit of 256 (PICULET_MAX_STEPS_PER_WORKFLOW)`.
pub(crate) fn over(limit: usize, setting: &str) -> String {
    format!("more than the limit of {limit} ({setting})")
}

/// The most events a pipeline records: the pipeline queued, running and finished (3), and
/// what each of its workflows records (see [`workflow_events`]). Workflows and steps dropped
/// before the run are stored already skipped and record none.
pub fn event_bound(step_counts: impl IntoIterator<Item = usize>) -> usize {
    step_counts.into_iter().fold(3usize, |sum, steps| {
        sum.saturating_add(workflow_events(steps, false))
    })
}

/// The most events a workflow that may run records: running and finished (2); each of its
/// steps and services, running and finished (2; the store only starts a queued step); and,
/// with `concurrency`, once that it waits for its group (the store says so once).
pub fn workflow_events(steps: usize, concurrency: bool) -> usize {
    2usize
        .saturating_add(usize::from(concurrency))
        .saturating_add(steps.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_a_plan() {
        assert_eq!(event_bound([]), 3);
        assert_eq!(event_bound([1]), 7);
        assert_eq!(event_bound([3, 2]), 3 + 2 + 6 + 2 + 4);
        assert_eq!(workflow_events(1, false), 4);
        assert_eq!(
            workflow_events(1, true),
            5,
            "and once that it waits for its group"
        );
    }

    #[test]
    fn refusals_name_the_setting() {
        assert_eq!(
            format!("workflow has 300 steps, {}", over(256, STEPS_PER_WORKFLOW)),
            "workflow has 300 steps, more than the limit of 256 (PICULET_MAX_STEPS_PER_WORKFLOW)"
        );
    }
}
