//! How a step runs, decided before anything is started: the program and its arguments (the
//! commands' script for `sh -e`, or the step's own entrypoint with the script as
//! `CI_SCRIPT`), its environment (the few host variables, the engine's `CI_*`, the step's
//! own, its secrets), its directory inside the workspace, and piculet's notices that open its
//! output. Steps the local backend cannot run (plugins, an image's own entrypoint, a service
//! outside the workspace) are refused here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use super::super::{BackendError, StepRun, WorkflowRun};
use super::LocalBackend;
use super::clone::clone_plan;
use super::workspace::join_inside;
use crate::pipeline::{DEFAULT_CLONE_IMAGE, EnvValue, StepKind, StepSpec, script};

/// The `PATH` of a step when piculet has none to pass on.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl LocalBackend {
    /// Everything about how a step runs, decided before anything is started.
    pub(super) fn launch(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
    ) -> Result<Launch, BackendError> {
        let spec = &step.spec;
        let workspace = self.workspace_dir(workflow)?;
        let dir = match spec.directory.as_deref() {
            Some(d) if spec.kind == StepKind::Service && d.starts_with('/') => {
                return Err(BackendError::Refused(format!(
                    "the local backend cannot run service {:?} in {d:?}: a directory outside the workspace is a place in a container, and only the kubernetes backend has one; write a directory relative to the workspace",
                    spec.name
                )));
            }
            Some(d) if !d.is_empty() => join_inside(
                &self.workflow_root(workflow.workflow_id),
                &workspace,
                d,
                "directory",
            )?,
            _ => workspace.clone(),
        };

        let mut env: BTreeMap<OsString, OsString> = self.host_env.iter().cloned().collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.extend(step.env.iter().map(|(k, v)| (k.into(), v.into())));
        for (name, value) in &spec.environment {
            env.insert(
                name.into(),
                resolve_env(spec, value, &workflow.secrets)?.into(),
            );
        }
        // The engine passes the container path; scripts need the real one.
        env.insert("CI_WORKSPACE".into(), workspace.clone().into_os_string());

        let mut notices = Vec::new();
        let image_notice = |image: &str| {
            format!(
                "piculet: the local backend ignores image {image:?}; the step runs on this host\n"
            )
        };
        let body = match spec.kind {
            StepKind::Plugin => {
                return Err(BackendError::Refused(format!(
                    "the local backend cannot run plugin steps (step {:?}, image {:?}): run piculet with PICULET_BACKEND=kubernetes",
                    spec.name, spec.image
                )));
            }
            StepKind::Clone if spec.commands.is_empty() && spec.entrypoint.is_none() => {
                if !spec.image.is_empty() && spec.image != DEFAULT_CLONE_IMAGE {
                    notices.push(image_notice(&spec.image));
                }
                let clone = clone_plan(spec, &step.env, &workflow.secrets)?;
                notices.extend(clone.notices);
                env.extend(clone.env.into_iter().map(|(k, v)| (k.into(), v.into())));
                // A prompt for credentials would wait forever: nobody is there to answer.
                env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
                Body::Script(clone.commands)
            }
            StepKind::Step | StepKind::Service | StepKind::Clone => {
                if !spec.image.is_empty() {
                    notices.push(image_notice(&spec.image));
                }
                match spec.entrypoint.as_deref() {
                    Some([program, args @ ..]) => Body::Entrypoint {
                        program: program.clone(),
                        args: args.to_vec(),
                        commands: spec.commands.clone(),
                    },
                    _ if spec.commands.is_empty() => {
                        return Err(BackendError::Refused(format!(
                            "the local backend cannot run step {:?}: it has no commands, and an image's own entrypoint (image {:?}) only runs on the kubernetes backend",
                            spec.name, spec.image
                        )));
                    }
                    _ => Body::Script(spec.commands.clone()),
                }
            }
        };

        let (program, args, script) = match body {
            Body::Script(commands) => (
                "/bin/sh".to_string(),
                vec!["-e".to_string()],
                Some(script::commands(&commands)),
            ),
            Body::Entrypoint {
                program,
                args,
                commands,
            } => {
                if !commands.is_empty() {
                    // As Woodpecker does: the script for an entrypoint such as
                    // `script::CI_SCRIPT_COMMAND`.
                    env.insert(
                        script::CI_SCRIPT.into(),
                        script::ci_script(&commands).into(),
                    );
                }
                (program, args, None)
            }
        };
        Ok(Launch {
            program,
            args,
            script,
            env,
            dir,
            notices,
        })
    }
}

/// What a step runs: a script of commands, or a program of the user's choice.
enum Body {
    Script(Vec<String>),
    Entrypoint {
        program: String,
        args: Vec<String>,
        commands: Vec<String>,
    },
}

/// A step ready to be spawned.
pub(super) struct Launch {
    pub(super) program: String,
    /// The script's path is appended when there is a script.
    pub(super) args: Vec<String>,
    pub(super) script: Option<String>,
    pub(super) env: BTreeMap<OsString, OsString>,
    pub(super) dir: PathBuf,
    /// piculet's own lines, first in the step's output.
    pub(super) notices: Vec<String>,
}

pub(super) fn spawn_error(spec: &StepSpec, program: &str, e: io::Error) -> BackendError {
    match e.kind() {
        io::ErrorKind::NotFound => BackendError::Refused(format!(
            "step {:?}: {program:?} was not found on this host (the local backend runs steps on the host, not in their image)",
            spec.name
        )),
        io::ErrorKind::PermissionDenied => BackendError::Refused(format!(
            "step {:?}: {program:?} cannot be executed on this host: {e}",
            spec.name
        )),
        _ => BackendError::Failed(format!(
            "step {:?}: cannot start {program:?}: {e}",
            spec.name
        )),
    }
}

fn resolve_env(
    spec: &StepSpec,
    value: &EnvValue,
    secrets: &BTreeMap<String, String>,
) -> Result<String, BackendError> {
    match value {
        EnvValue::Literal(v) => Ok(v.clone()),
        EnvValue::FromSecret(name) => secret(spec, name, secrets),
    }
}

pub(super) fn secret(
    spec: &StepSpec,
    name: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<String, BackendError> {
    secrets.get(name).cloned().ok_or_else(|| {
        BackendError::Refused(format!(
            "step {:?} uses secret {name:?}, which the submission does not provide",
            spec.name
        ))
    })
}
