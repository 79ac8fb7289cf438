//! Paths a config gives (the workspace, a step's directory, volume mount paths), checked at
//! submission so that a path leading out of the workspace is refused before anything is stored
//! or run. The backends check again when they join them (defence in depth).

/// Whether a path has a `..` segment. Any one is refused, even one that would stay inside
/// after resolution: there is no need for it, and nothing then depends on how it resolves.
fn climbs(path: &str) -> bool {
    path.split('/').any(|segment| segment == "..")
}

const CLIMBS: &str = "has a \"..\" segment; write the path without one";

/// `workspace.base`: where the workspace is mounted; absolute.
pub(crate) fn workspace_base(base: &str) -> Result<(), String> {
    if !base.starts_with('/') {
        return Err(format!(
            "\"{base}\" is not an absolute path; write one such as /woodpecker"
        ));
    }
    if climbs(base) {
        return Err(format!("\"{base}\" {CLIMBS}"));
    }
    // Mounted over `/`, the workspace would hide the image's own files.
    if base.trim_matches('/').is_empty() {
        return Err(format!(
            "\"{base}\" is the root directory; mount the workspace below it, such as /woodpecker"
        ));
    }
    Ok(())
}

/// `workspace.path` and a step's `directory`: inside the workspace, so relative.
pub(crate) fn inside_workspace(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!(
            "\"{path}\" is an absolute path; write one relative to the workspace, such as src"
        ));
    }
    if climbs(path) {
        return Err(format!(
            "\"{path}\" {CLIMBS}: it must stay inside the workspace"
        ));
    }
    Ok(())
}

/// A service's `directory`: its working directory. Relative, it is inside the workspace; an
/// absolute one is a place in the service's own container, as Woodpecker takes it (a service
/// writes nothing there that a step reads). No `..` either way.
pub(crate) fn service_directory(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        if climbs(path) {
            return Err(format!("\"{path}\" {CLIMBS}"));
        }
        return Ok(());
    }
    inside_workspace(path)
}

/// A `volumes` entry, `name:/mount/path[:ro]` (or just `/mount/path`): its mount path must be
/// absolute. Other forms are left to the backend, which says what it can mount.
pub(crate) fn volume(entry: &str) -> Result<(), String> {
    let parts: Vec<&str> = entry.split(':').collect();
    let mount = match parts.as_slice() {
        [path] | [_, path] | [_, path, _] => *path,
        _ => return Ok(()),
    };
    if !mount.starts_with('/') {
        return Err(format!(
            "volume \"{entry}\" has no absolute mount path; write name:/mount/path or name:/mount/path:ro"
        ));
    }
    if climbs(mount) {
        return Err(format!(
            "volume \"{entry}\" has a \"..\" segment in its mount path; write the path without one"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_base_is_absolute_without_climbing() {
        assert_eq!(workspace_base("/woodpecker"), Ok(()));
        assert_eq!(
            workspace_base("woodpecker"),
            Err("\"woodpecker\" is not an absolute path; write one such as /woodpecker".into())
        );
        for root in ["/", "//"] {
            assert_eq!(
                workspace_base(root),
                Err(format!(
                    "\"{root}\" is the root directory; mount the workspace below it, such as /woodpecker"
                ))
            );
        }
        assert_eq!(
            workspace_base("/woodpecker/../etc"),
            Err("\"/woodpecker/../etc\" has a \"..\" segment; write the path without one".into())
        );
    }

    #[test]
    fn workspace_path_and_directory_stay_inside() {
        for ok in ["src", "", ".", "a/b", "a..b/c", "./x"] {
            assert_eq!(inside_workspace(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            inside_workspace("../../etc"),
            Err("\"../../etc\" has a \"..\" segment; write the path without one: it must stay inside the workspace".into())
        );
        assert!(inside_workspace("a/..").is_err());
        assert_eq!(
            inside_workspace("/etc"),
            Err(
                "\"/etc\" is an absolute path; write one relative to the workspace, such as src"
                    .into()
            )
        );
    }

    #[test]
    fn a_service_directory_may_be_anywhere_in_its_container() {
        for ok in ["/tmp/", "/var/lib/data", "sub/dir", ""] {
            assert_eq!(service_directory(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            service_directory("/tmp/../etc"),
            Err("\"/tmp/../etc\" has a \"..\" segment; write the path without one".into())
        );
        assert!(service_directory("../x").is_err());
    }

    #[test]
    fn volume_mount_paths() {
        for ok in ["cache:/cache", "cache:/cache:ro", "/data", "a:/b:c:d"] {
            assert_eq!(volume(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            volume("cache:rel"),
            Err("volume \"cache:rel\" has no absolute mount path; write name:/mount/path or name:/mount/path:ro".into())
        );
        assert!(volume("cache").is_err());
        assert_eq!(
            volume("cache:/a/../../etc:ro"),
            Err("volume \"cache:/a/../../etc:ro\" has a \"..\" segment in its mount path; write the path without one".into())
        );
    }
}
