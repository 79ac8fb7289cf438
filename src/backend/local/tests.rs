//! The local backend's tests: steps run as real processes in a temporary directory, through
//! the [`Backend`](super::super::Backend) interface the engine uses.

use super::workspace::make_writable;
use super::*;
use crate::backend::OutputLine;
use crate::pipeline::{
    Conclusion, DEFAULT_CLONE_IMAGE, EnvValue, SettingValue, StepKind, StepSpec, WorkflowPlan,
    Workspace,
};

/// A directory removed at the end of the test, whatever happens.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("piculet-local-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        make_writable(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(name: &str, commands: &[&str]) -> StepSpec {
    StepSpec {
        commands: commands.iter().map(|c| c.to_string()).collect(),
        ..StepSpec::new(name, StepKind::Step, "")
    }
}

fn workflow_run(secrets: &[(&str, &str)]) -> WorkflowRun {
    WorkflowRun {
        pipeline_id: Uuid::now_v7(),
        workflow_id: Uuid::now_v7(),
        plan: WorkflowPlan {
            name: "test".to_string(),
            matrix: BTreeMap::new(),
            platform: "linux/amd64".to_string(),
            workspace: Workspace::default(),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
            runs_on: vec![Conclusion::Success],
            services: Vec::new(),
            steps: Vec::new(),
            dropped_steps: Vec::new(),
            concurrency: None,
        },
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        step_ids: BTreeMap::new(),
        namespace: None,
        registries: Vec::new(),
    }
}

fn step_run(spec: StepSpec) -> StepRun {
    let env = [
        ("CI", "woodpecker"),
        ("CI_PIPELINE_ID", "42"),
        ("CI_STEP_NAME", spec.name.as_str()),
        ("CI_WORKSPACE", "/woodpecker/src"),
    ];
    StepRun {
        step_id: Uuid::now_v7(),
        attempt: 1,
        runnable_at: std::time::Instant::now(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        spec,
    }
}

struct Fixture {
    dir: TempDir,
    backend: LocalBackend,
    wf: WorkflowRun,
}

async fn fixture_with(secrets: &[(&str, &str)]) -> Fixture {
    let dir = TempDir::new();
    let backend = LocalBackend::new(dir.0.clone());
    let wf = workflow_run(secrets);
    backend.setup_workflow(&wf).await.expect("setup");
    Fixture { dir, backend, wf }
}

async fn fixture() -> Fixture {
    fixture_with(&[]).await
}

/// Every guard in these tests: a hung step fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

async fn collect(handle: StepHandle) -> (Vec<String>, StepExit) {
    let StepHandle { mut output, exit } = handle;
    timeout(LIMIT, async move {
        let mut lines = Vec::new();
        while let Some(line) = output.recv().await {
            lines.push(line.text);
        }
        (lines, exit.await)
    })
    .await
    .expect("the step ended in time")
}

async fn run(f: &Fixture, spec: StepSpec) -> (Vec<String>, StepExit) {
    let handle = f
        .backend
        .start_step(&f.wf, &step_run(spec))
        .await
        .expect("start");
    collect(handle).await
}

/// Reads output until a line starting with each of `prefixes` was seen; returns the
/// number after each prefix (a pid).
async fn read_pids(output: &mut mpsc::Receiver<OutputLine>, prefixes: &[&str]) -> Vec<i32> {
    let mut pids = vec![None; prefixes.len()];
    timeout(LIMIT, async {
        while pids.iter().any(Option::is_none) {
            let line = output.recv().await.expect("output ended early").text;
            for (i, prefix) in prefixes.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(prefix) {
                    pids[i] = rest.trim().parse::<i32>().ok();
                }
            }
        }
    })
    .await
    .expect("pids printed in time");
    pids.into_iter().flatten().collect()
}

fn exited(code: i32) -> StepExit {
    StepExit::Exited { code, reason: None }
}

fn killed(signal: i32) -> StepExit {
    StepExit::Exited {
        code: 128 + signal,
        reason: Some(format!("killed by signal {signal}")),
    }
}

/// Gone, or a zombie (dead, waiting for a parent that may be slow to reap it).
fn process_gone(pid: i32) -> bool {
    let Some(process) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    if rustix::process::test_kill_process(process).is_err() {
        return true;
    }
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| matches!(stat.state, 'Z' | 'X'))
}

async fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

#[tokio::test]
async fn output_comes_line_by_line_with_stderr_in_order() {
    let f = fixture().await;
    let (lines, exit) = run(
        &f,
        spec(
            "build",
            &[
                "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
                "echo 'it'\"'\"'s quoted \\ \"and\" $HOME-literal'",
            ],
        ),
    )
    .await;
    assert_eq!(
        lines,
        [
            "+ echo out1; echo err1 >&2; echo out2; echo err2 >&2\n",
            "out1\n",
            "err1\n",
            "out2\n",
            "err2\n",
            "+ echo 'it'\"'\"'s quoted \\ \"and\" $HOME-literal'\n",
            "it's quoted \\ \"and\" $HOME-literal\n",
        ]
    );
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let f = fixture().await;
    assert_eq!(run(&f, spec("ok", &["true"])).await.1, exited(0));
    assert_eq!(run(&f, spec("three", &["exit 3"])).await.1, exited(3));
    // A finished step's files stay until the teardown: an adopting replica may still
    // have to report it. The exit file holds the real status.
    let state_dir = f.backend.state_dir(f.wf.workflow_id);
    let mut exits: Vec<String> = std::fs::read_dir(state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "exit"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    exits.sort();
    assert_eq!(exits, ["0\n", "3\n"]);
}

#[tokio::test]
async fn the_first_failing_command_stops_the_step() {
    let f = fixture().await;
    let (lines, exit) = run(&f, spec("fail", &["echo a", "false", "echo never"])).await;
    assert_eq!(lines, ["+ echo a\n", "a\n", "+ false\n"]);
    assert_eq!(exit, exited(1));
}

#[tokio::test]
async fn environment_has_ci_variables_literals_and_secrets() {
    let f = fixture_with(&[("token", "s3cr3t-value")]).await;
    let mut s = spec(
        "env",
        &[
            "echo \"$CI $CI_PIPELINE_ID $CI_STEP_NAME $LITERAL $FROM_SECRET\"",
            "echo \"$CI_WORKSPACE\"",
            "echo \"${CI_SCRIPT:-no script variable}\"",
        ],
    );
    s.environment = BTreeMap::from([
        ("LITERAL".to_string(), EnvValue::Literal("lit".to_string())),
        (
            "FROM_SECRET".to_string(),
            EnvValue::FromSecret("token".to_string()),
        ),
    ]);
    let (lines, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0));
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    assert_eq!(lines[1], "woodpecker 42 env lit s3cr3t-value\n");
    assert_eq!(lines[3], format!("{}\n", workspace.display()));
    assert_eq!(lines[5], "no script variable\n");
    // The echoed command shows the variable's name, never its value.
    let echoed: Vec<&String> = lines.iter().filter(|l| l.starts_with("+ ")).collect();
    assert_eq!(echoed.len(), 3);
    assert!(echoed.iter().all(|l| !l.contains("s3cr3t")), "{echoed:?}");
}

#[tokio::test]
async fn the_host_environment_is_minimal() {
    let f = fixture().await;
    let (lines, _) = run(&f, spec("env", &["env | cut -d= -f1 | sort"])).await;
    let names: Vec<&str> = lines[1..].iter().map(|l| l.trim_end()).collect();
    for name in &names {
        assert!(
            HOST_VARIABLES.contains(name)
                || name.starts_with("CI")
                || ["PWD", "SHLVL", "_", "OLDPWD"].contains(name),
            "unexpected variable {name} in {names:?}"
        );
    }
    assert!(names.contains(&"PATH"));
}

#[tokio::test]
async fn a_missing_secret_is_refused() {
    let f = fixture().await;
    let mut s = spec("env", &["true"]);
    s.environment = BTreeMap::from([("X".to_string(), EnvValue::FromSecret("absent".to_string()))]);
    match f.backend.start_step(&f.wf, &step_run(s)).await {
        Err(BackendError::Refused(m)) => assert!(m.contains("\"absent\""), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn steps_run_in_the_workspace_and_their_directory() {
    let f = fixture().await;
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    assert_eq!(
        workspace,
        f.backend
            .workflow_root(f.wf.workflow_id)
            .join("woodpecker/src")
    );
    let expected = std::fs::canonicalize(&workspace).unwrap();
    let (lines, _) = run(&f, spec("pwd", &["pwd -P"])).await;
    assert_eq!(lines[1], format!("{}\n", expected.display()));

    let mut s = spec("sub", &["pwd -P", "echo \"$CI_WORKSPACE\""]);
    s.directory = Some("sub/dir".to_string());
    let (lines, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0));
    assert_eq!(
        lines[1],
        format!("{}\n", expected.join("sub/dir").display())
    );
    assert_eq!(lines[3], format!("{}\n", workspace.display()));
}

#[tokio::test]
async fn paths_cannot_leave_the_workflow_directory() {
    let f = fixture().await;
    let mut s = spec("escape", &["true"]);
    s.directory = Some("../../../../etc".to_string());
    assert!(matches!(
        f.backend.start_step(&f.wf, &step_run(s)).await,
        Err(BackendError::Refused(_))
    ));
    let mut wf = f.wf.clone();
    wf.plan.workspace.path = "../../..".to_string();
    assert!(matches!(
        f.backend.setup_workflow(&wf).await,
        Err(BackendError::Refused(_))
    ));
    // Inside is fine, `..` included.
    let mut s = spec("sibling", &["pwd -P"]);
    s.directory = Some("../other".to_string());
    let (_, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn an_image_is_ignored_with_a_warning_first() {
    let f = fixture().await;
    let mut s = spec("go", &["echo hi"]);
    s.image = "golang:1.22".to_string();
    let (lines, exit) = run(&f, s).await;
    assert_eq!(
        lines,
        [
            "piculet: the local backend ignores image \"golang:1.22\"; the step runs on this host\n",
            "+ echo hi\n",
            "hi\n",
        ]
    );
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn plugin_steps_and_steps_without_commands_are_refused() {
    let f = fixture().await;
    let mut s = spec("publish", &[]);
    s.kind = StepKind::Plugin;
    s.image = "plugins/docker".to_string();
    match f.backend.start_step(&f.wf, &step_run(s)).await {
        Err(BackendError::Refused(m)) => {
            assert!(m.contains("plugin steps"), "{m}");
            assert!(m.contains("\"plugins/docker\""), "{m}");
            assert!(m.contains("PICULET_BACKEND=kubernetes"), "{m}");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    let mut s = spec("postgres", &[]);
    s.kind = StepKind::Service;
    s.image = "postgres:16".to_string();
    assert!(matches!(
        f.backend.start_step(&f.wf, &step_run(s)).await,
        Err(BackendError::Refused(_))
    ));
}

/// A service's absolute directory is a place in a container; on this host it would be a
/// directory outside the workflow's, so it is refused rather than taken elsewhere.
#[tokio::test]
async fn a_service_in_an_absolute_directory_is_refused() {
    let f = fixture().await;
    let mut s = spec("cache", &["true"]);
    s.kind = StepKind::Service;
    s.directory = Some("/tmp/".to_string());
    match f.backend.start_step(&f.wf, &step_run(s)).await {
        Err(BackendError::Refused(m)) => {
            assert!(m.contains("\"/tmp/\""), "{m}");
            assert!(m.contains("kubernetes backend"), "{m}");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_entrypoint_gets_the_script_as_ci_script() {
    let f = fixture().await;
    let mut s = spec("custom", &["echo hi", "echo \"${CI_SCRIPT:-unset}\""]);
    s.entrypoint = Some(vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        "echo $CI_SCRIPT | base64 -d | /bin/sh -e".to_string(),
    ]);
    let (lines, exit) = run(&f, s).await;
    assert_eq!(
        lines,
        [
            "+ echo hi\n",
            "hi\n",
            "+ echo \"${CI_SCRIPT:-unset}\"\n",
            "unset\n"
        ]
    );
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn a_step_that_prints_nothing() {
    let f = fixture().await;
    let mut s = spec("quiet", &[]);
    s.entrypoint = Some(vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        "exit 0".to_string(),
    ]);
    let (lines, exit) = run(&f, s).await;
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn a_missing_program_is_refused() {
    let f = fixture().await;
    let mut s = spec("missing", &[]);
    s.entrypoint = Some(vec!["/nonexistent/piculet-test-program".to_string()]);
    assert!(matches!(
        f.backend.start_step(&f.wf, &step_run(s)).await,
        Err(BackendError::Refused(_))
    ));
}

#[tokio::test]
async fn a_mebibyte_of_output_comes_back_byte_exact() {
    let f = fixture().await;
    // Lines of many lengths, some far beyond the maximum, multi-byte characters cut
    // anywhere, `\r\n`, empty lines, and a last line without `\n`.
    let unit = "abcdefghij-é€🦀\r";
    let mut data = String::new();
    let lengths = [0, 1, 80, 5, 70_000, 200_000, 3, 65_536, 65_537, 131_071];
    let mut i = 0;
    while data.len() < (1 << 20) + 100_000 {
        let len = lengths[i % lengths.len()];
        let line: String = unit.chars().cycle().take(len).collect();
        data.push_str(&line);
        data.push('\n');
        i += 1;
    }
    data.push_str("last line without newline é");
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    std::fs::write(workspace.join("data.txt"), &data).unwrap();

    let (lines, exit) = run(&f, spec("cat", &["cat data.txt"])).await;
    assert_eq!(exit, exited(0));
    assert_eq!(lines[0], "+ cat data.txt\n");
    let output = lines[1..].concat();
    assert_eq!(output.len(), data.len());
    assert!(output == data, "the output differs from the input");
    assert!(
        lines
            .iter()
            .all(|l| l.trim_end_matches('\n').len() <= super::super::lines::MAX_LINE)
    );
    assert_eq!(lines.last().unwrap(), "last line without newline é");
}

#[tokio::test]
async fn stop_step_terminates_the_whole_group() {
    let f = fixture().await;
    let run = step_run(spec(
        "server",
        &[
            "echo \"leader $$\"",
            "sleep 1000 & echo \"child $!\"",
            "sh -c 'sleep 1000 & echo \"grandchild $!\"; wait' &",
            "wait",
        ],
    ));
    let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
    // The lines arrive while the step runs.
    let pids = read_pids(&mut handle.output, &["leader ", "child ", "grandchild "]).await;
    assert_eq!(f.backend.running_steps(&f.wf).await.unwrap(), [run.step_id]);

    f.backend
        .stop_step(&f.wf, run.step_id, Duration::from_secs(10))
        .await
        .expect("stop");
    let (_, exit) = collect(handle).await;
    assert_eq!(exit, killed(Signal::TERM.as_raw()));
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the stop");
    }
    assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
    // Stopping a finished step, or an unknown one, does nothing.
    f.backend
        .stop_step(&f.wf, run.step_id, Duration::from_secs(1))
        .await
        .expect("stop again");
    f.backend
        .stop_step(&f.wf, Uuid::now_v7(), Duration::from_secs(1))
        .await
        .expect("stop unknown");
}

#[tokio::test]
async fn stop_step_kills_after_the_grace_period() {
    let f = fixture().await;
    let run = step_run(spec(
        "stubborn",
        &[
            "trap '' TERM",
            "sleep 1000 & echo \"child $!\"",
            "echo \"leader $$\"",
            "wait",
        ],
    ));
    let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
    let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;
    f.backend
        .stop_step(&f.wf, run.step_id, Duration::from_millis(300))
        .await
        .expect("stop");
    let (_, exit) = collect(handle).await;
    assert_eq!(exit, killed(Signal::KILL.as_raw()));
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the kill");
    }
}

#[tokio::test]
async fn a_background_process_holding_the_pipe_does_not_hold_the_step() {
    let f = fixture().await;
    let run = step_run(spec("leaky", &["sleep 1000 & echo \"child $!\""]));
    let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
    let pids = read_pids(&mut handle.output, &["child "]).await;
    let (rest, exit) = collect(handle).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(exit, exited(0));
    assert!(wait_gone(pids[0]).await, "the background process survived");
}

#[tokio::test]
async fn output_written_after_the_main_process_exits_is_kept_for_a_moment() {
    let f = fixture().await;
    let (lines, exit) = run(&f, spec("late", &["(sleep 0.1; echo late) &"])).await;
    assert_eq!(lines, ["+ (sleep 0.1; echo late) &\n", "late\n"]);
    assert_eq!(exit, exited(0));
}

#[tokio::test]
async fn teardown_kills_services_and_removes_the_workspace() {
    let f = fixture().await;
    let mut s = spec(
        "database",
        &[
            "sleep 1000 & echo \"child $!\"",
            "echo \"leader $$\"",
            "wait",
        ],
    );
    s.kind = StepKind::Service;
    let run = step_run(s);
    let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
    let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;
    let root = f.backend.workflow_root(f.wf.workflow_id);
    std::fs::write(root.join("woodpecker/src/file"), "x").unwrap();
    // A read-only directory, as a Go module cache makes them.
    let ro = root.join("woodpecker/src/ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("f"), "x").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    }

    f.backend.teardown_workflow(&f.wf).await.expect("teardown");
    let (_, exit) = collect(handle).await;
    assert_eq!(exit, killed(Signal::KILL.as_raw()));
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the teardown");
    }
    assert!(!root.exists(), "the workspace is still there");
    f.backend
        .teardown_workflow(&f.wf)
        .await
        .expect("teardown again");
    assert!(f.dir.0.join("workspaces").exists());
}

#[tokio::test]
async fn after_a_restart_running_steps_are_found_and_stopped() {
    let f = fixture().await;
    let run = step_run(spec(
        "left-behind",
        &[
            "sleep 1000 & echo \"child $!\"",
            "echo \"leader $$\"",
            "wait",
        ],
    ));
    let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
    let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;

    // A second backend on the same data directory knows nothing but the files.
    let restarted = LocalBackend::new(f.dir.0.clone());
    restarted.setup_workflow(&f.wf).await.expect("setup again");
    assert_eq!(restarted.running_steps(&f.wf).await.unwrap(), [run.step_id]);
    assert_eq!(
        restarted.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
        Presence::Present
    );
    restarted
        .stop_step(&f.wf, run.step_id, Duration::from_secs(5))
        .await
        .expect("stop");
    for pid in &pids {
        assert!(wait_gone(*pid).await, "process {pid} survived the stop");
    }
    let (_, exit) = collect(handle).await;
    assert_eq!(exit, killed(Signal::TERM.as_raw()));
    // Ended, its exit on file: still there to be reported, no longer running.
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
    assert_eq!(record::read_exit(&files).await, Some(143));
    restarted.teardown_workflow(&f.wf).await.expect("teardown");
}

#[tokio::test]
async fn starting_a_running_step_again_fails() {
    let f = fixture().await;
    let run = step_run(spec("once", &["echo started", "sleep 1000"]));
    // Two starts at once: one runs, the other is refused.
    let (first, second) = tokio::join!(
        f.backend.start_step(&f.wf, &run),
        f.backend.start_step(&f.wf, &run)
    );
    let mut handle = match (first, second) {
        (Ok(h), Err(BackendError::Failed(_))) | (Err(BackendError::Failed(_)), Ok(h)) => h,
        (a, b) => panic!("expected one start: {:?} / {:?}", a.err(), b.err()),
    };
    // Stopped once it runs (see `process` on a SIGTERM in the instant of its start).
    let started = timeout(LIMIT, async {
        while let Some(line) = handle.output.recv().await {
            if line.text == "started\n" {
                return true;
            }
        }
        false
    });
    assert!(started.await.unwrap());
    assert!(matches!(
        f.backend.start_step(&f.wf, &run).await,
        Err(BackendError::Failed(_))
    ));
    f.backend
        .stop_step(&f.wf, run.step_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(collect(handle).await.1, killed(Signal::TERM.as_raw()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_run_concurrently() {
    let f = Arc::new(fixture().await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let name = format!("step-{i}");
                run(&f, spec(&name, &["sleep 0.2", "echo \"$CI_STEP_NAME\""])).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (lines, exit) = task.await.unwrap();
        assert_eq!(exit, exited(0));
        assert_eq!(lines.last().unwrap(), &format!("step-{i}\n"));
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=piculet",
            "-c",
            "user.email=piculet@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with two commits; returns its path, the first commit and the branch ref.
fn test_repo(dir: &Path) -> (PathBuf, String, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("hello.txt"), "hello\n").unwrap();
    git(&repo, &["add", "hello.txt"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("second.txt"), "second\n").unwrap();
    git(&repo, &["add", "second.txt"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    let branch = git(&repo, &["symbolic-ref", "HEAD"]);
    (repo, first, branch)
}

fn clone_spec(settings: &[(&str, &str)]) -> StepSpec {
    let mut s = StepSpec::new("clone", StepKind::Clone, DEFAULT_CLONE_IMAGE);
    s.settings = settings
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                SettingValue::Value(serde_json::Value::String(v.to_string())),
            )
        })
        .collect();
    s
}

#[tokio::test]
async fn the_clone_step_fetches_the_commit_with_the_hosts_git() {
    let f = fixture().await;
    let (repo, first, branch) = test_repo(&f.dir.0);
    let remote = repo.display().to_string();
    let s = clone_spec(&[("remote", &remote), ("ref", &branch), ("sha", &first)]);
    let (lines, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0), "{lines:?}");
    assert!(lines[0].starts_with("piculet: cloning "), "{lines:?}");
    assert!(lines.contains(&"+ git init -q\n".to_string()), "{lines:?}");
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    assert_eq!(
        std::fs::read_to_string(workspace.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(!workspace.join("second.txt").exists(), "checked out at sha");
    assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
    assert_eq!(git(&workspace, &["config", "remote.origin.url"]), remote);
}

#[tokio::test]
async fn the_clone_step_fetches_a_ref_without_sha() {
    let f = fixture().await;
    let (repo, _, branch) = test_repo(&f.dir.0);
    let s = clone_spec(&[("remote", &repo.display().to_string()), ("ref", &branch)]);
    let (lines, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0), "{lines:?}");
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    assert!(workspace.join("second.txt").exists());
}

#[tokio::test]
async fn a_failed_clone_fails_the_step() {
    let f = fixture().await;
    let missing = f.dir.0.join("no-such-repo").display().to_string();
    let (lines, exit) = run(&f, clone_spec(&[("remote", &missing), ("ref", "main")])).await;
    assert_ne!(exit, exited(0), "{lines:?}");
    let mut s = clone_spec(&[]);
    s.name = "custom-clone".to_string();
    assert!(matches!(
        f.backend.start_step(&f.wf, &step_run(s)).await,
        Err(BackendError::Refused(_))
    ));
}

/// Values that would run a command if git read them as options: the clone script must
/// fail without running any, even if a submission's validation were bypassed (a setting
/// from a secret is not validated at all).
#[tokio::test]
async fn hostile_clone_values_never_run_as_options() {
    let f = fixture().await;
    let (repo, first, branch) = test_repo(&f.dir.0);
    let bare = f.dir.0.join("bare.git");
    git(
        &f.dir.0,
        &[
            "clone",
            "-q",
            "--bare",
            &repo.display().to_string(),
            "bare.git",
        ],
    );
    let remote = bare.display().to_string();
    let marker = |name: &str| f.dir.0.join(name);
    let option = |name: &str| format!("--upload-pack=touch {}", marker(name).display());
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "ref",
            vec![("remote", remote.clone()), ("ref", option("ref"))],
        ),
        (
            "sha",
            vec![("remote", remote.clone()), ("sha", option("sha"))],
        ),
        (
            "sha-then-ref",
            vec![
                ("remote", remote.clone()),
                ("sha", option("sha-then-ref")),
                ("ref", option("sha-then-ref")),
            ],
        ),
        (
            "checkout",
            // A fetch that works, then a checkout of an option-like commit.
            vec![
                ("remote", remote.clone()),
                ("ref", branch.clone()),
                ("sha", "--orphan=x".to_string()),
            ],
        ),
        (
            "remote",
            vec![("remote", option("remote")), ("ref", branch.clone())],
        ),
    ];
    for (name, settings) in cases {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (lines, exit) = run(&f, clone_spec(&settings)).await;
        assert_ne!(exit, exited(0), "{name}: {lines:?}");
        assert!(!marker(name).exists(), "{name}: the option ran: {lines:?}");
    }
    // The same script with ordinary values still clones from the bare repository.
    let s = clone_spec(&[("remote", &remote), ("ref", &branch), ("sha", &first)]);
    let (lines, exit) = run(&f, s).await;
    assert_eq!(exit, exited(0), "{lines:?}");
    let workspace = f.backend.workspace_dir(&f.wf).unwrap();
    assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
}

/// Without `--end-of-options` the same value does run: the test above would catch a script
/// that lost it.
#[test]
fn the_hostile_ref_runs_when_git_reads_it_as_an_option() {
    let dir = TempDir::new();
    let (repo, _, _) = test_repo(&dir.0);
    let marker = dir.0.join("ran");
    let out = std::process::Command::new("git")
        .args(["fetch", &repo.display().to_string()])
        .arg(format!("--upload-pack=touch {}", marker.display()))
        .current_dir(&repo)
        .output()
        .expect("git");
    assert!(!out.status.success());
    assert!(marker.exists(), "{out:?}");
}

/// Starts `run` on a backend in a runtime of its own, reads `lines` lines, and drops the
/// runtime: the replica is gone (its tasks and its handle on the child with it), the step
/// goes on. Returns the lines read.
fn start_in_a_replica_that_dies(
    dir: &Path,
    wf: &WorkflowRun,
    run: &StepRun,
    lines: usize,
) -> Vec<OutputLine> {
    let (dir, wf, run) = (dir.to_path_buf(), wf.clone(), run.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let read = rt.block_on(async {
            let backend = LocalBackend::new(dir);
            backend.setup_workflow(&wf).await.expect("setup");
            let mut handle = backend.start_step(&wf, &run).await.expect("start");
            let mut read = Vec::new();
            timeout(LIMIT, async {
                while read.len() < lines {
                    read.push(handle.output.recv().await.expect("output ended early"));
                }
            })
            .await
            .expect("lines in time");
            read
        });
        drop(rt);
        read
    })
    .join()
    .expect("the first replica")
}

fn numbered(n: usize, pause: &str, code: i32) -> (StepSpec, Vec<String>) {
    let command =
        format!("for i in $(seq 1 {n}); do echo \"line $i\"; sleep {pause}; done; exit {code}");
    let mut expected = vec![format!("+ {command}\n")];
    expected.extend((1..=n).map(|i| format!("line {i}\n")));
    (spec("numbered", &[&command]), expected)
}

#[tokio::test]
async fn a_new_replica_attaches_to_a_running_step_with_every_line_once() {
    let f = fixture().await;
    let (s, expected) = numbered(30, "0.03", 7);
    let run = step_run(s);
    let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 5);

    let adopter = LocalBackend::new(f.dir.0.clone());
    assert_eq!(
        adopter.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
        Presence::Present
    );
    assert_eq!(adopter.running_steps(&f.wf).await.unwrap(), [run.step_id]);
    let after = first.last().map(|l| l.at);
    let handle = adopter
        .attach_step(&f.wf, &run, after)
        .await
        .expect("attach");
    let (rest, exit) = collect(handle).await;
    let mut all: Vec<String> = first.into_iter().map(|l| l.text).collect();
    assert!(
        !rest.is_empty() && rest.len() < expected.len(),
        "attached while it ran"
    );
    all.extend(rest);
    assert_eq!(all, expected);
    assert_eq!(exit, exited(7));
    // Attaching again, as a third replica would after the second died, resumes the same way.
    let third = LocalBackend::new(f.dir.0.clone());
    let handle = third.attach_step(&f.wf, &run, after).await.expect("attach");
    let (again, exit) = collect(handle).await;
    assert_eq!(again, expected[5..]);
    assert_eq!(exit, exited(7));
}

#[tokio::test]
async fn a_new_replica_reports_a_step_that_ended_while_nobody_watched() {
    let f = fixture().await;
    let (s, expected) = numbered(20, "0.01", 3);
    let run = step_run(s);
    let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 3);
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
    timeout(LIMIT, async {
        while record::read_exit(&files).await.is_none() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .expect("the step ended on its own");

    let adopter = LocalBackend::new(f.dir.0.clone());
    assert_eq!(
        adopter.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
        Presence::Present
    );
    let handle = adopter
        .attach_step(&f.wf, &run, first.last().map(|l| l.at))
        .await
        .expect("attach");
    let (rest, exit) = collect(handle).await;
    let mut all: Vec<String> = first.into_iter().map(|l| l.text).collect();
    all.extend(rest);
    assert_eq!(all, expected);
    assert_eq!(exit, exited(3));

    // Killed by a signal while unwatched: still reads so.
    let run = step_run(spec("killed", &["echo before", "kill -9 $$"]));
    let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 2);
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
    timeout(LIMIT, async {
        while record::read_exit(&files).await.is_none() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .expect("the step ended");
    let handle = adopter
        .attach_step(&f.wf, &run, first.last().map(|l| l.at))
        .await
        .expect("attach");
    let (rest, exit) = collect(handle).await;
    assert_eq!(rest, ["+ kill -9 $$\n"]);
    assert_eq!(exit, killed(Signal::KILL.as_raw()));
}

#[tokio::test]
async fn an_attempt_without_record_is_absent_and_one_without_process_or_exit_interrupted() {
    let f = fixture().await;
    let step_id = Uuid::now_v7();
    assert_eq!(
        f.backend.probe_step(&f.wf, step_id, 1).await.unwrap(),
        Presence::Absent
    );
    // A record whose wrapper is gone without an exit file: a dead process's pid.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id() as i32;
    dead.wait().unwrap();
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), step_id, 1);
    record::write_record(
        &files,
        &Record {
            step_id,
            attempt: 1,
            pgid: pid,
            proc_start: None,
            started_at: Utc::now(),
            host: None,
        },
    )
    .unwrap();
    assert!(matches!(
        f.backend.probe_step(&f.wf, step_id, 1).await.unwrap(),
        Presence::Interrupted { .. }
    ));
    std::fs::write(files.log(), "some output\n").unwrap();
    let presence = f.backend.probe_step(&f.wf, step_id, 1).await.unwrap();
    assert!(
        matches!(&presence, Presence::Interrupted { reason } if reason.contains("without recording its exit")),
        "{presence:?}"
    );
    let mut run = step_run(spec("lost", &["true"]));
    run.step_id = step_id;
    assert!(matches!(
        f.backend.attach_step(&f.wf, &run, None).await,
        Err(BackendError::Refused(_))
    ));
    assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
    // Another attempt of the same step has nothing yet.
    assert_eq!(
        f.backend.probe_step(&f.wf, step_id, 2).await.unwrap(),
        Presence::Absent
    );
}

#[tokio::test]
async fn a_recorded_attempt_is_never_started_again() {
    let f = fixture().await;
    let runs = f.dir.0.join("runs");
    let mut run = step_run(spec("once", &[&format!("echo ran >> {}", runs.display())]));
    let (_, exit) = collect(f.backend.start_step(&f.wf, &run).await.expect("start")).await;
    assert_eq!(exit, exited(0));
    // A restarted replica asked to start the same attempt refuses: it ran.
    let restarted = LocalBackend::new(f.dir.0.clone());
    assert!(matches!(
        restarted.start_step(&f.wf, &run).await,
        Err(BackendError::Failed(_))
    ));
    assert!(matches!(
        f.backend.start_step(&f.wf, &run).await,
        Err(BackendError::Failed(_))
    ));
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");
    // The next attempt runs.
    run.attempt = 2;
    let (_, exit) = collect(restarted.start_step(&f.wf, &run).await.expect("start")).await;
    assert_eq!(exit, exited(0));
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\nran\n");
}

#[tokio::test]
async fn the_reaper_stops_a_dead_replicas_processes_and_removes_its_workspace() {
    let f = fixture().await;
    let run = step_run(spec(
        "left-behind",
        &[
            "sleep 1000 & echo \"child $!\"",
            "echo \"leader $$\"",
            "wait",
        ],
    ));
    let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 4);
    let pids: Vec<i32> = first
        .iter()
        .filter_map(|l| {
            l.text
                .split_once(' ')
                .and_then(|(_, p)| p.trim().parse().ok())
        })
        .collect();
    assert_eq!(pids.len(), 2, "{first:?}");
    let adopter = LocalBackend::new(f.dir.0.clone());
    assert_eq!(
        adopter.managed_workflows().await.unwrap(),
        [f.wf.workflow_id]
    );
    adopter
        .remove_workflow(f.wf.workflow_id)
        .await
        .expect("remove");
    for pid in pids {
        assert!(wait_gone(pid).await, "process {pid} survived the reaper");
    }
    assert!(!f.backend.workflow_root(f.wf.workflow_id).exists());
    assert!(adopter.managed_workflows().await.unwrap().is_empty());
}

/// A record outlives its processes: once an attempt's group is gone, its id may be reused
/// by an unrelated process that leads a group of its own (another step, any shell job).
/// Stopping the attempt, attaching to it, or removing its workflow must not kill that.
#[tokio::test]
async fn a_recorded_group_id_reused_by_another_process_is_never_signalled() {
    use std::os::unix::process::CommandExt as _;
    let f = fixture().await;
    // The unrelated process: leader of its own group, as every step is.
    let mut stranger = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = stranger.id() as i32;
    let start = process::proc_start(pid).expect("/proc");
    // An attempt that ended long ago while nobody watched, recorded with that id and the
    // start time of its own wrapper (another process, so another start time).
    let run = step_run(spec("ended-long-ago", &["true"]));
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
    record::write_record(
        &files,
        &Record {
            step_id: run.step_id,
            attempt: 1,
            pgid: pid,
            proc_start: Some(start.saturating_sub(1)),
            started_at: Utc::now(),
            host: None,
        },
    )
    .unwrap();
    std::fs::write(files.log(), "done\n").unwrap();
    std::fs::write(files.exit(), "0\n").unwrap();
    let alive = |stranger: &mut std::process::Child| stranger.try_wait().unwrap().is_none();

    let adopter = LocalBackend::new(f.dir.0.clone());
    adopter
        .stop_step(&f.wf, run.step_id, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        alive(&mut stranger),
        "stop_step killed an unrelated process"
    );

    let (lines, exit) = collect(
        adopter
            .attach_step(&f.wf, &run, None)
            .await
            .expect("attach"),
    )
    .await;
    assert_eq!((lines, exit), (vec!["done\n".to_string()], exited(0)));
    assert!(
        alive(&mut stranger),
        "the adopted attempt's end killed an unrelated process"
    );

    adopter.remove_workflow(f.wf.workflow_id).await.unwrap();
    assert!(
        alive(&mut stranger),
        "removing the workflow killed an unrelated process"
    );
    assert!(!f.backend.workflow_root(f.wf.workflow_id).exists());
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// A data directory shared with a replica on another host (or in another pid namespace, or
/// before the host restarted): the pids its records name are not this replica's to see.
/// A process of ours that happens to have that pid and start time is not the step, and the
/// step may be running over there: never taken for present, never signalled, never run
/// again blindly. After a restart of this same host it is gone for sure.
#[tokio::test]
async fn a_record_written_on_another_host_is_not_read_as_this_hosts() {
    use std::os::unix::process::CommandExt as _;
    let f = fixture().await;
    let mut stranger = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = stranger.id() as i32;
    let start = process::proc_start(pid).expect("/proc");
    let here = record::Host::current().expect("this host");
    let state_dir = f.backend.state_dir(f.wf.workflow_id);
    let write = |step_id: Uuid, name: &str, boot_id: &str| {
        let files = Files::new(&state_dir, step_id, 1);
        let json = serde_json::json!({
            "step_id": step_id, "attempt": 1, "pgid": pid, "proc_start": start,
            "started_at": Utc::now(),
            "host": {"name": name, "boot_id": boot_id, "pid_ns": "pid:[1]"},
        });
        std::fs::write(files.record(), json.to_string()).unwrap();
        std::fs::write(files.log(), "running over there\n").unwrap();
    };
    let elsewhere = Uuid::now_v7();
    write(
        elsewhere,
        "another-host",
        "00000000-0000-0000-0000-000000000000",
    );
    let rebooted = Uuid::now_v7();
    write(rebooted, &here.name, "00000000-0000-0000-0000-000000000000");

    let probed = f.backend.probe_step(&f.wf, elsewhere, 1).await;
    assert!(
        matches!(&probed, Err(BackendError::Failed(r)) if r.contains("another-host")),
        "{probed:?}"
    );
    assert_eq!(
        f.backend.probe_step(&f.wf, rebooted, 1).await.unwrap(),
        Presence::Interrupted {
            reason: "attempt 1 was lost when its host restarted".into()
        }
    );
    for step in [elsewhere, rebooted] {
        f.backend
            .stop_step(&f.wf, step, Duration::from_millis(200))
            .await
            .unwrap();
    }
    assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
    f.backend.remove_workflow(f.wf.workflow_id).await.unwrap();
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a process of this host was signalled for a step of another"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// A record that cannot be read (a disk error, a hand-edited file) hides whether the
/// attempt still runs, and where: running it again could run it twice at once.
#[tokio::test]
async fn an_unreadable_record_is_not_an_interrupted_attempt() {
    let f = fixture().await;
    let step_id = Uuid::now_v7();
    let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), step_id, 1);
    std::fs::write(files.record(), "{\"step_id\": ").unwrap();
    std::fs::write(files.log(), "still running, maybe\n").unwrap();
    let probed = f.backend.probe_step(&f.wf, step_id, 1).await;
    assert!(
        matches!(&probed, Err(BackendError::Failed(r)) if r.contains("is not a record")),
        "{probed:?}"
    );
}

/// Not a test: prints the output figures of the README's Performance section (run with
/// `cargo test --release --lib backend::local::tests::output_figures -- --ignored --nocapture`).
/// Throughput: a step printing 1,000,000 short lines, start to last line received.
/// Latency: a step printing its own clock every 20 ms, each line's arrival minus that clock.
#[tokio::test]
#[ignore]
async fn output_figures() {
    let f = fixture().await;
    let n = 1_000_000;
    let started = std::time::Instant::now();
    let handle = f
        .backend
        .start_step(
            &f.wf,
            &step_run(spec(
                "seq",
                &[&format!("seq -f 'log line %.0f of a noisy step' 1 {n}")],
            )),
        )
        .await
        .expect("start");
    let StepHandle { mut output, exit } = handle;
    let mut count = 0usize;
    while output.recv().await.is_some() {
        count += 1;
    }
    let took = started.elapsed();
    assert_eq!(exit.await, exited(0));
    println!(
        "throughput: {} lines in {:.3} s: {:.0} lines/s",
        count,
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    let handle = f
        .backend
        .start_step(
            &f.wf,
            &step_run(spec(
                "clock",
                &["for i in $(seq 200); do date +%s%N; sleep 0.02; done"],
            )),
        )
        .await
        .expect("start");
    let StepHandle { mut output, exit } = handle;
    let mut delays = Vec::new();
    while let Some(line) = output.recv().await {
        let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        if let Ok(printed) = line.text.trim().parse::<i64>() {
            delays.push((now - printed) as f64 / 1e6);
        }
    }
    assert_eq!(exit.await, exited(0));
    delays.sort_by(f64::total_cmp);
    let p = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "latency over {} lines: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}
