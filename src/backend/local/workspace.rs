//! A workflow's directories under `<data_dir>/workspaces/<workflow_id>`: its root, the
//! state directory of its attempts' files, and the workspace the steps see as
//! `CI_WORKSPACE`, every path of which is kept inside the root; and their removal.

use std::io;
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use super::super::{BackendError, WorkflowRun};
use super::{LocalBackend, failed};

impl LocalBackend {
    /// The directory holding everything of a workflow.
    pub fn workflow_root(&self, workflow_id: Uuid) -> PathBuf {
        self.data_dir
            .join("workspaces")
            .join(workflow_id.to_string())
    }

    /// The workspace directory of a workflow: what steps see as `CI_WORKSPACE`, the plan's
    /// `workspace.base/workspace.path` under the workflow's root (`/woodpecker/src` →
    /// `<root>/woodpecker/src`).
    pub fn workspace_dir(&self, workflow: &WorkflowRun) -> Result<PathBuf, BackendError> {
        let ws = &workflow.plan.workspace;
        let root = self.workflow_root(workflow.workflow_id);
        let base = join_inside(&root, &root, &ws.base, "workspace.base")?;
        join_inside(&root, &base, &ws.path, "workspace.path")
    }

    pub(super) fn state_dir(&self, workflow_id: Uuid) -> PathBuf {
        self.workflow_root(workflow_id).join(".piculet")
    }
}

pub(super) async fn remove_file_if_any(file: &Path) {
    // Best effort: a leftover file is overwritten or refused by the next start.
    let _ = tokio::fs::remove_file(file).await;
}

/// Removes a directory tree; absent is fine. Read-only directories (a Go module cache, for
/// one) are made writable first, since their entries cannot be removed otherwise.
pub(super) async fn remove_dir_all(dir: PathBuf) -> Result<(), BackendError> {
    let result = tokio::task::spawn_blocking(move || {
        let mut last = Ok(());
        for _ in 0..3 {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    make_writable(&dir);
                    last = Err(failed(format!("cannot remove {}", dir.display()), e));
                }
            }
        }
        last
    })
    .await;
    result.unwrap_or_else(|e| Err(BackendError::Failed(format!("workspace removal: {e}"))))
}

pub(super) fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // symlink_metadata: never follow a link out of the workspace.
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = std::fs::set_permissions(dir, perms);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// `base` joined with the relative form of `rel` (a leading `/` is dropped: a workspace base
/// such as `/woodpecker` is meant under the workflow's root), `..` resolved lexically and not
/// allowed to lead out of `root`.
pub(super) fn join_inside(
    root: &Path,
    base: &Path,
    rel: &str,
    what: &str,
) -> Result<PathBuf, BackendError> {
    let mut path = base.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(c) => path.push(c),
            Component::ParentDir => {
                path.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
        if !path.starts_with(root) {
            return Err(BackendError::Refused(format!(
                "{what} {rel:?} leads out of the workflow's directory"
            )));
        }
    }
    Ok(path)
}
