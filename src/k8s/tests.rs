//! Rendering tests: snapshots of the rendered objects for every option, default and refusal,
//! the documentation examples of Woodpecker, GitLab Runner and Drone field by field, and the
//! invariants every rendering must keep (checked in [`render_ok`] for every test): every pod
//! passes the Pod Security Standard in force, every name is a valid, unique DNS label, and no
//! secret value appears in a pod.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use uuid::Uuid;

use super::names;
use super::pss::{self, Level};
use super::*;
use crate::pipeline::{self, Context, RepoSpec, Source, SourceContent, WorkflowPlan};
use crate::run::RegistryCredential;

const SECRET_VALUE: &str = "s3cr3t-value-never-in-a-pod";

fn config(pairs: &[(&str, &str)]) -> KubernetesConfig {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let settings: KubernetesSettings =
        serde_json::from_value(serde_json::Value::Object(map)).expect("settings");
    KubernetesConfig::from_settings(&settings).unwrap_or_else(|e| panic!("{e}"))
}

fn setting_error(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let settings: KubernetesSettings =
        serde_json::from_value(serde_json::Value::Object(map)).expect("settings");
    match KubernetesConfig::from_settings(&settings) {
        Ok(_) => panic!("accepted {pairs:?}"),
        Err(e) => e.to_string(),
    }
}

fn plan_with(yaml: &str, secrets: &[&str], repo: bool) -> WorkflowPlan {
    plan_with_repo(
        yaml,
        secrets,
        repo.then(|| RepoSpec {
            clone_url: "https://example.com/acme/api.git".into(),
            r#ref: "refs/heads/main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
        }),
    )
}

fn plan_with_repo(yaml: &str, secrets: &[&str], repo: Option<RepoSpec>) -> WorkflowPlan {
    let ctx = Context {
        secret_names: secrets.iter().map(|s| s.to_string()).collect(),
        repo,
        ..Context::default()
    };
    let src = [Source {
        name: "ci".into(),
        content: SourceContent::Text(yaml.to_string()),
    }];
    match pipeline::plan(&src, &ctx) {
        Ok(p) => p.plan.workflows.into_iter().next().expect("a workflow"),
        Err(r) => panic!("plan refused: {:#?}", r.errors),
    }
}

fn plan(yaml: &str) -> WorkflowPlan {
    plan_with(yaml, &[], false)
}

fn input(workflow: WorkflowPlan) -> RenderInput {
    let step_ids = workflow
        .services
        .iter()
        .chain(&workflow.steps)
        .enumerate()
        .map(|(i, s)| (s.name.clone(), Uuid::from_u128(0x100 + i as u128)))
        .collect();
    RenderInput {
        pipeline_id: Uuid::from_u128(1),
        workflow_id: Uuid::from_u128(2),
        step_ids,
        attempt: 1,
        namespace: None,
        workflow,
        secrets: BTreeMap::new(),
        registries: Vec::new(),
        environment: BTreeMap::new(),
        redact_secrets: false,
    }
}

/// Controls a pod may fail because the administrator relaxed them on purpose: a privileged
/// image from the allowlist, a hostPath volume from PICULET_K8S_VOLUMES.
fn exempt(config: &KubernetesConfig, pod: &Pod) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let spec = pod.spec.as_ref().expect("spec");
    if spec.containers.iter().any(|c| {
        c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
            && c.image.as_deref().is_some_and(|i| {
                config.privileged_images.is_match(i)
                    || config
                        .privileged_images
                        .is_match(security::image_without_tag(i))
            })
    }) {
        out.insert("Privileged Containers");
    }
    if config.volumes.iter().any(|v| v.kind == "host_path") {
        out.insert("HostPath Volumes");
    }
    out
}

/// Checks what every rendering must keep, and returns it.
fn check(config: &KubernetesConfig, r: &RenderedWorkflow, input: &RenderInput) {
    let level = match config.pod_security {
        PodSecurity::Baseline => Level::Baseline,
        PodSecurity::Restricted => Level::Restricted,
    };
    let mut pod_names = BTreeSet::new();
    for p in &r.pods {
        let exempt = exempt(config, &p.pod);
        let findings: Vec<_> = pss::check(&p.pod, level)
            .into_iter()
            .filter(|f| !exempt.contains(f.control))
            .collect();
        assert!(
            findings.is_empty(),
            "pod {} fails {level:?}: {findings:#?}",
            p.step
        );
        if level == Level::Restricted {
            assert_eq!(pss::non_root_groups(&p.pod), [], "{}", p.step);
        }
        let name = p.pod.metadata.name.clone().expect("name");
        assert!(names::is_dns1035_label(&name), "{name}");
        assert!(pod_names.insert(name.clone()), "duplicate pod name {name}");
        let spec = p.pod.spec.as_ref().expect("spec");
        assert!(names::is_dns_label(spec.hostname.as_deref().unwrap_or("")));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers.len(), 1);
        let json = serde_json::to_string(&p.pod).expect("json");
        for value in input.secrets.values() {
            assert!(
                !json.contains(value.as_str()),
                "secret value in pod {}",
                p.step
            );
        }
        for r in &input.registries {
            assert!(
                !json.contains(&r.password),
                "registry password in pod {}",
                p.step
            );
        }
        let owners = p.pod.metadata.owner_references.as_ref().expect("owner");
        assert_eq!(owners[0].kind, "PersistentVolumeClaim");
        assert_eq!(Some(&owners[0].name), r.workspace.metadata.name.as_ref());
        let labels = p.pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("piculet")
        );
        for key in [
            "piculet.dev/pipeline-id",
            "piculet.dev/workflow-id",
            "piculet.dev/step-id",
        ] {
            assert!(labels.contains_key(key), "{key}");
        }
    }
    for obj in r.to_list() {
        let name = obj["metadata"]["name"].as_str().expect("name");
        assert!(names::is_dns1035_label(name), "{name}");
        assert_eq!(
            obj["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "piculet"
        );
        assert!(obj["apiVersion"].is_string() && obj["kind"].is_string());
        assert_eq!(obj["metadata"]["namespace"], r.namespace.as_str());
    }
    // Pure and deterministic.
    assert_eq!(render_workflow(config, input).as_ref(), Ok(r));
}

fn render_ok(config: &KubernetesConfig, input: &RenderInput) -> RenderedWorkflow {
    match render_workflow(config, input) {
        Ok(r) => {
            check(config, &r, input);
            r
        }
        Err(v) => panic!("refused: {v:#?}"),
    }
}

fn refused(config: &KubernetesConfig, input: &RenderInput) -> Vec<PolicyViolation> {
    match render_workflow(config, input) {
        Ok(_) => panic!("rendered, expected a refusal"),
        Err(Refused::Policy(v)) => v,
        Err(Refused::Invalid(v)) => panic!("refused by the API server's rules: {v:#?}"),
    }
}

/// What the API server would refuse in a rendering the policy allows.
fn invalid(config: &KubernetesConfig, input: &RenderInput) -> Vec<PolicyViolation> {
    match render_workflow(config, input) {
        Ok(_) => panic!("rendered, expected a refusal"),
        Err(Refused::Invalid(v)) => v,
        Err(Refused::Policy(v)) => panic!("refused by the policy: {v:#?}"),
    }
}

fn spec_of<'a>(r: &'a RenderedWorkflow, step: &str) -> &'a PodSpec {
    r.pod(step).and_then(|p| p.spec.as_ref()).expect("pod")
}

fn container_of<'a>(r: &'a RenderedWorkflow, step: &str) -> &'a Container {
    &spec_of(r, step).containers[0]
}

fn env_of(r: &RenderedWorkflow, step: &str) -> BTreeMap<String, serde_json::Value> {
    container_of(r, step)
        .env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => serde_json::Value::String(v.clone()),
                (None, Some(f)) => serde_json::to_value(f).expect("json"),
                _ => serde_json::Value::Null,
            };
            (e.name.clone(), v)
        })
        .collect()
}

const ALL_ALLOWED: &str = "nodeSelector,tolerations,affinity,serviceAccountName,runtimeClassName,labels,annotations,hostUsers,secrets";

// ---- defaults ------------------------------------------------------------------------------

#[test]
fn a_render_input_written_for_debugging_names_its_secrets_and_holds_no_value() {
    let mut input = input(plan(
        "steps:\n  - name: a\n    image: x\n    commands: [ls]\n",
    ));
    input.secrets.insert("token".into(), SECRET_VALUE.into());
    input.registries.push(RegistryCredential {
        address: "registry.example.com".into(),
        username: "ci".into(),
        password: "registry-password".into(),
    });
    let written = format!("{input:?}");
    assert!(written.contains("\"token\""), "{written}");
    assert!(!written.contains(SECRET_VALUE), "{written}");
    assert!(!written.contains("registry-password"), "{written}");
}

#[test]
fn defaults_with_clone_service_secret_and_registry() {
    let yaml = "services:\n  - name: postgres\n    image: postgres:16\n    ports: [5432]\nsteps:\n  - name: build\n    image: golang:1.22\n    commands: [go build, \"echo $${TOKEN}\"]\n    environment:\n      TOKEN: {from_secret: token}\n      PLAIN: \"$(not expanded) $$\"\n";
    let mut input = input(plan_with(yaml, &["token"], true));
    input.secrets.insert("token".into(), SECRET_VALUE.into());
    input.secrets.insert("unused".into(), "not rendered".into());
    input.registries.push(RegistryCredential {
        address: "registry.example.com".into(),
        username: "ci".into(),
        password: "registry-password".into(),
    });
    input
        .environment
        .insert("CI_PIPELINE_ID".into(), "42".into());
    let config = config(&[]);
    let r = render_ok(&config, &input);
    insta::assert_yaml_snapshot!(r.to_list());

    // Creation order: PVC, values Secret, pull Secret, Service, pods (service first).
    let kinds: Vec<String> = r
        .to_list()
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "PersistentVolumeClaim",
            "Secret",
            "Secret",
            "Service",
            "Pod",
            "Pod",
            "Pod"
        ]
    );
    let steps: Vec<&str> = r.pods.iter().map(|p| p.step.as_str()).collect();
    assert_eq!(steps, ["postgres", "clone", "build"]);
    assert_eq!(r.namespace, "piculet");
    assert!(!r.read_write_once);

    let pvc = r.workspace.spec.as_ref().expect("spec");
    assert_eq!(
        pvc.access_modes.as_deref(),
        Some(&["ReadWriteMany".to_string()][..])
    );
    assert_eq!(
        pvc.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str()),
        Some("10G")
    );
    assert!(
        r.workspace.metadata.owner_references.is_none(),
        "the anchor has no owner"
    );

    let build = spec_of(&r, "build");
    assert_eq!(build.hostname.as_deref(), Some("build"));
    assert_eq!(build.subdomain, r.service.metadata.name);
    assert_eq!(build.automount_service_account_token, Some(false));
    assert_eq!(build.enable_service_links, Some(false));
    assert_eq!(
        build
            .node_selector
            .as_ref()
            .and_then(|n| n.get("kubernetes.io/arch"))
            .map(String::as_str),
        Some("amd64")
    );
    let search = build
        .dns_config
        .as_ref()
        .and_then(|d| d.searches.as_ref())
        .expect("searches");
    assert_eq!(
        search[0],
        format!(
            "{}.piculet.svc.cluster.local",
            r.service.metadata.name.as_deref().unwrap_or("")
        )
    );
    let sc = build.security_context.as_ref().expect("pod security");
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let c = container_of(&r, "build");
    assert_eq!(c.working_dir.as_deref(), Some("/woodpecker/src"));
    assert_eq!(
        c.volume_mounts.as_ref().expect("mounts")[0].mount_path,
        "/woodpecker"
    );
    assert_eq!(
        c.command.as_ref().expect("command"),
        &crate::pipeline::script::CI_SCRIPT_COMMAND.map(String::from)
    );
    assert_eq!(
        c.security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.clone()),
        Some(vec!["NET_RAW".to_string()])
    );
    let env = env_of(&r, "build");
    assert_eq!(env["PLAIN"], "$$(not expanded) $$$$");
    assert_eq!(env["CI_PIPELINE_ID"], "42");
    assert_eq!(env["TOKEN"]["secretKeyRef"]["key"], "token");
    let script = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        env["CI_SCRIPT"].as_str().expect("script"),
    )
    .expect("base64");
    assert_eq!(
        String::from_utf8(script).expect("utf8"),
        "unset CI_SCRIPT\nprintf '%s\\n' '+ go build'\ngo build\nprintf '%s\\n' '+ echo ${TOKEN}'\necho ${TOKEN}\n"
    );

    // The clone step runs the configured clone image as a plugin.
    let clone = container_of(&r, "clone");
    assert_eq!(
        clone.image.as_deref(),
        Some("docker.io/woodpeckerci/plugin-git:2.6")
    );
    assert!(clone.command.is_none());
    assert!(clone.args.is_none());
    assert_eq!(
        env_of(&r, "clone")["PLUGIN_REMOTE"],
        "https://example.com/acme/api.git"
    );
    // The service has no deadline and exposes its port.
    let pg = spec_of(&r, "postgres");
    assert_eq!(pg.active_deadline_seconds, None);
    assert_eq!(
        pg.containers[0].ports.as_ref().expect("ports")[0].container_port,
        5432
    );
    // Only the secrets used are rendered; the pull secret is referenced by every pod.
    assert_eq!(r.secrets[0].string_data.as_ref().expect("data").len(), 1);
    assert_eq!(
        build.image_pull_secrets.as_ref().expect("pull")[0].name,
        r.secrets[1].metadata.name.clone().unwrap_or_default()
    );
}

#[test]
fn dry_run_redacts_secret_values() {
    let yaml =
        "steps: [{name: a, image: alpine, commands: [ls], environment: {T: {from_secret: token}}}]";
    let mut input = input(plan_with(yaml, &["token"], false));
    input.secrets.insert("token".into(), SECRET_VALUE.into());
    input.registries.push(RegistryCredential {
        address: "r.example.com".into(),
        username: "u".into(),
        password: "registry-password".into(),
    });
    input.redact_secrets = true;
    let r = render_ok(&config(&[]), &input);
    let text = serde_json::to_string(&r.to_list()).expect("json");
    assert!(!text.contains(SECRET_VALUE) && !text.contains("registry-password"));
    insta::assert_yaml_snapshot!(r.secrets);
}

#[test]
fn owner_uid_is_set_after_the_anchor_exists() {
    let mut r = render_ok(
        &config(&[]),
        &input(plan("steps: [{name: a, image: alpine, commands: [ls]}]")),
    );
    assert_eq!(
        r.service.metadata.owner_references.as_ref().expect("owner")[0].uid,
        ""
    );
    r.set_owner_uid("5f0c1d1e-0000-4000-8000-000000000000");
    for obj in r.to_list().iter().skip(1) {
        assert_eq!(
            obj["metadata"]["ownerReferences"][0]["uid"],
            "5f0c1d1e-0000-4000-8000-000000000000"
        );
        assert_eq!(obj["metadata"]["ownerReferences"][0]["controller"], true);
    }
}

// ---- step options --------------------------------------------------------------------------

#[test]
fn every_step_option_when_allowed() {
    let yaml = include_str!("testdata/every_option.yaml");
    let mut input = input(plan(yaml));
    input.workflow.steps[0].extra_hosts = vec!["db.local:10.0.0.5".into()];
    input.workflow.steps[0].dns = vec!["10.0.0.53".into()];
    input.workflow.steps[0].dns_search = vec!["corp.example.com".into()];
    input.workflow.steps[0].pull = true;
    input.workflow.steps[0].volumes =
        vec!["build-cache:/cache".into(), "tools:/opt/tools:ro".into()];
    input.workflow.steps[0].timeout = Some(std::time::Duration::from_secs(600));
    input.workflow.steps[0].directory = Some("cmd/server".into());
    let config = config(&[
        ("allow_from_step", ALL_ALLOWED),
        ("service_account_overwrite_allowed", "builder|deployer"),
        ("allowed_claims", "build-*,tools"),
    ]);
    let r = render_ok(&config, &input);
    insta::assert_yaml_snapshot!(r.pod("build"));

    let spec = spec_of(&r, "build");
    let c = &spec.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(c.working_dir.as_deref(), Some("/woodpecker/src/cmd/server"));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
    assert_eq!(spec.automount_service_account_token, None);
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(spec.host_users, Some(false));
    let sc = spec.security_context.as_ref().expect("sc");
    assert_eq!(
        (sc.run_as_user, sc.run_as_group, sc.fs_group),
        (Some(1000), Some(1000), Some(2000))
    );
    assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
    assert_eq!(
        sc.seccomp_profile
            .as_ref()
            .map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())),
        Some(("Localhost", Some("profiles/audit.json")))
    );
    assert_eq!(
        sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let csc = c.security_context.as_ref().expect("container sc");
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(
        csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["NET_RAW".into(), "ALL".into()])
    );
    assert_eq!(csc.privileged, None);
    assert_eq!(
        spec.host_aliases.as_ref().expect("aliases")[0].ip,
        "10.0.0.5"
    );
    let dns = spec.dns_config.as_ref().expect("dns");
    assert_eq!(
        dns.nameservers.as_deref(),
        Some(&["10.0.0.53".to_string()][..])
    );
    assert_eq!(dns.searches.as_ref().map(|s| s.len()), Some(2));
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("workspace", "/woodpecker"),
            ("claim-0", "/cache"),
            ("claim-1", "/opt/tools"),
            ("secret-1", "/root/.ssh/id")
        ]
    );
    let env = env_of(&r, "build");
    assert_eq!(
        env["AWS_ACCESS_KEY_ID"]["secretKeyRef"],
        serde_json::json!({"name": "aws", "key": "id"})
    );
    let labels = r
        .pod("build")
        .and_then(|p| p.metadata.labels.clone())
        .expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("ci"));
    let ann = r
        .pod("build")
        .and_then(|p| p.metadata.annotations.clone())
        .expect("annotations");
    assert_eq!(ann.get("note").map(String::as_str), Some("true"));
    assert_eq!(
        spec.tolerations.as_ref().expect("tolerations")[0].toleration_seconds,
        Some(3600)
    );
    assert!(
        spec.affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .is_some()
    );
    let res = c.resources.as_ref().expect("resources");
    assert_eq!(
        res.limits
            .as_ref()
            .and_then(|l| l.get("ephemeral-storage"))
            .map(|q| q.0.as_str()),
        Some("1Gi")
    );
}

#[test]
fn plugin_step_settings_become_plugin_variables() {
    let yaml = "steps:\n  - name: publish\n    image: woodpeckerci/plugin-docker-buildx\n    settings:\n      repo: acme/api\n      tags: [latest, '1.0']\n      build_args: {GO: '1.22'}\n      dry-run: true\n      depth: 50\n      password: {from_secret: docker_password}\n";
    let mut input = input(plan_with(yaml, &["docker_password"], false));
    input
        .secrets
        .insert("docker_password".into(), SECRET_VALUE.into());
    let r = render_ok(&config(&[]), &input);
    let c = container_of(&r, "publish");
    assert!(c.command.is_none(), "a plugin runs its image's entrypoint");
    let env = env_of(&r, "publish");
    assert_eq!(env["PLUGIN_REPO"], "acme/api");
    assert_eq!(env["PLUGIN_TAGS"], "[\"latest\",\"1.0\"]");
    assert_eq!(env["PLUGIN_BUILD_ARGS"], "{\"GO\":\"1.22\"}");
    assert_eq!(env["PLUGIN_DRY_RUN"], "true");
    assert_eq!(env["PLUGIN_DEPTH"], "50");
    assert_eq!(
        env["PLUGIN_PASSWORD"]["secretKeyRef"]["key"],
        "docker_password"
    );
    assert!(!env.contains_key("CI_SCRIPT"));
    assert_eq!(
        r.pod("publish")
            .and_then(|p| p.metadata.labels.clone())
            .and_then(|l| l.get("piculet.dev/kind").cloned())
            .as_deref(),
        Some("plugin")
    );
    insta::assert_yaml_snapshot!(c.env);
}

/// A step with only an image (Woodpecker's own CI has them) is a plugin step: the pod runs
/// the image's own entrypoint, with no command, no arguments and no script.
#[test]
fn a_step_with_only_an_image_runs_its_entrypoint() {
    let yaml = "steps:\n  - name: lint\n    image: woodpeckerci/plugin-prettier\n";
    let workflow = plan(yaml);
    assert_eq!(workflow.steps[0].kind, pipeline::StepKind::Plugin);
    let r = render_ok(&config(&[]), &input(workflow));
    let c = container_of(&r, "lint");
    assert_eq!(c.image.as_deref(), Some("woodpeckerci/plugin-prettier"));
    assert!(c.command.is_none() && c.args.is_none(), "{c:?}");
    assert!(!env_of(&r, "lint").contains_key("CI_SCRIPT"));
    assert_eq!(c.working_dir.as_deref(), Some("/woodpecker/src"));
    insta::assert_yaml_snapshot!(r.pod("lint"));
}

/// A service's absolute directory is its working directory as written, as Woodpecker takes
/// it; a relative one is inside the workspace.
#[test]
fn a_service_directory_is_its_working_directory() {
    let yaml = "services:\n  cache: {image: redis, directory: /tmp/}\n  db: {image: postgres, directory: data}\nsteps: [{name: a, image: alpine, commands: [ls]}]\n";
    let r = render_ok(&config(&[]), &input(plan(yaml)));
    assert_eq!(
        container_of(&r, "cache").working_dir.as_deref(),
        Some("/tmp/")
    );
    assert_eq!(
        container_of(&r, "db").working_dir.as_deref(),
        Some("/woodpecker/src/data")
    );
}

#[test]
fn entrypoint_overrides_the_shell_wrapper() {
    let yaml = "steps: [{name: a, image: node, entrypoint: [node, '-e', 'eval(process.env.CI_SCRIPT)'], commands: [ls]}]";
    let r = render_ok(&config(&[]), &input(plan(yaml)));
    let c = container_of(&r, "a");
    assert_eq!(
        c.command.as_deref(),
        Some(
            &[
                "node".to_string(),
                "-e".into(),
                "eval(process.env.CI_SCRIPT)".into()
            ][..]
        )
    );
    assert!(env_of(&r, "a").contains_key("CI_SCRIPT"));
}

/// `workspaceVolume: false` (Woodpecker's key): the pod has neither the workspace volume nor
/// its mount, keeps its working directory (as Woodpecker does; the runtime creates it empty),
/// and needs no administrator switch, since it gives the pod less, not more.
#[test]
fn a_step_or_service_without_the_workspace_volume() {
    let yaml = "services:\n  - name: cache\n    image: redis\n    backend_options: {kubernetes: {workspaceVolume: false}}\nsteps:\n  - name: notify\n    image: curlimages/curl\n    commands: [curl -fsS https://example.com]\n    volumes: ['tools:/opt/tools:ro']\n    backend_options: {kubernetes: {workspaceVolume: false}}\n  - name: build\n    image: golang\n    commands: [go build]\n    backend_options: {kubernetes: {workspaceVolume: true}}\n";
    let config = config(&[("storage_rwx", "false"), ("allowed_claims", "tools")]);
    let r = render_ok(&config, &input(plan(yaml)));
    insta::assert_yaml_snapshot!(r.pod("cache"));
    for step in ["cache", "notify"] {
        let spec = spec_of(&r, step);
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert!(!volumes.contains(&"workspace"), "{step}: {volumes:?}");
        assert!(
            spec.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.name != "workspace"),
            "{step}"
        );
        assert_eq!(
            spec.containers[0].working_dir.as_deref(),
            Some("/woodpecker/src"),
            "{step}"
        );
        assert!(!pod::mounts_workspace(r.pod(step).expect("pod")));
    }
    assert_eq!(
        spec_of(&r, "notify").volumes.as_ref().map(|v| v.len()),
        Some(1),
        "the step's own claim stays"
    );
    assert!(pod::mounts_workspace(r.pod("build").expect("pod")));
}

#[test]
fn privileged_image_on_the_allowlist() {
    let yaml = "steps: [{name: dind, image: 'docker.io/library/docker:27-dind', privileged: true, commands: [dockerd]}]";
    let config = config(&[("privileged_images", "docker.io/library/docker")]);
    let r = render_ok(&config, &input(plan(yaml)));
    let sc = container_of(&r, "dind")
        .security_context
        .clone()
        .expect("sc");
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.capabilities, None);
    assert_eq!(sc.allow_privilege_escalation, None);
    assert_eq!(
        pss::check(r.pod("dind").expect("pod"), Level::Baseline)[0].control,
        "Privileged Containers"
    );
}

#[test]
fn non_root_steps_can_write_their_workspace() {
    // fsGroup, not a chown init container: it passes restricted, which a root init container
    // would not.
    let yaml = "steps:\n  - {name: a, image: alpine, commands: [touch x], backend_options: {kubernetes: {securityContext: {runAsUser: 1001}}}}\n  - {name: b, image: alpine, commands: [touch y], backend_options: {kubernetes: {securityContext: {runAsNonRoot: true}}}}\n  - {name: root, image: alpine, commands: [touch z]}\n";
    let r = render_ok(&config(&[]), &input(plan(yaml)));
    let fs = |s: &str| {
        spec_of(&r, s)
            .security_context
            .as_ref()
            .and_then(|c| c.fs_group)
    };
    assert_eq!(fs("a"), Some(1001));
    assert_eq!(fs("b"), Some(security::DEFAULT_FS_GROUP));
    assert_eq!(fs("root"), None);
    assert!(spec_of(&r, "a").init_containers.is_none());
}

// ---- administrator settings ----------------------------------------------------------------

#[test]
fn every_administrator_setting() {
    let config = config(&[
        ("namespace", "ci"),
        ("volume_size", "50Gi"),
        ("storage_class", "fast-rwo"),
        ("storage_rwx", "false"),
        ("pod_labels", "{\"team\":\"platform\",\"tier\":\"ci\"}"),
        (
            "pod_annotations",
            "cluster-autoscaler.kubernetes.io/safe-to-evict=false",
        ),
        ("node_selector", "pool=ci"),
        (
            "tolerations",
            "[{\"key\":\"ci\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]",
        ),
        ("service_account", "piculet-steps"),
        ("runtime_class", "gvisor"),
        ("pull_secret_names", "corp-registry,mirror"),
        ("pull_policy", "if-not-present,always"),
        ("priority_class", "ci-low"),
        ("dns_policy", "None"),
        (
            "dns_config",
            "{\"nameservers\":[\"10.0.0.10\"],\"searches\":[\"corp.example.com\"],\"options\":[{\"name\":\"ndots\",\"value\":\"2\"}]}",
        ),
        ("termination_grace_period", "10s"),
        ("volumes", include_str!("testdata/admin_volumes.json")),
        ("cpu_request", "500m"),
        ("cpu_limit", "2"),
        ("memory_request", "512Mi"),
        ("memory_limit", "2Gi"),
        ("ephemeral_storage_limit", "10Gi"),
        ("service_cpu_request", "100m"),
        ("service_memory_limit", "1Gi"),
        ("clone_cpu_request", "50m"),
        ("clone_memory_limit", "256Mi"),
        ("secctx_nonroot", "true"),
        ("clone_image", "registry.example.com/plugin-git:2.6"),
        ("cluster_domain", "k8s.internal"),
    ]);
    let yaml = "services: [{name: redis, image: redis}]\nsteps: [{name: build, image: golang, commands: [go build]}]\n";
    let r = render_ok(&config, &input(plan_with(yaml, &[], true)));
    insta::assert_yaml_snapshot!(r.to_list());

    assert_eq!(r.namespace, "ci");
    assert!(r.read_write_once);
    assert_eq!(r.pull_policies, ["IfNotPresent", "Always"]);
    let spec = spec_of(&r, "build");
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("piculet-steps"));
    assert_eq!(spec.automount_service_account_token, None);
    assert_eq!(spec.priority_class_name.as_deref(), Some("ci-low"));
    assert_eq!(spec.dns_policy.as_deref(), Some("None"));
    assert_eq!(spec.termination_grace_period_seconds, Some(10));
    assert_eq!(
        spec.volumes.as_ref().map(|v| v.len()),
        Some(7),
        "workspace and six administrator volumes"
    );
    assert_eq!(
        spec.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let req = |s: &str, res: &str| {
        spec_of(&r, s).containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(res))
            .map(|q| q.0.clone())
    };
    assert_eq!(req("build", "cpu").as_deref(), Some("500m"));
    assert_eq!(req("redis", "cpu").as_deref(), Some("100m"));
    assert_eq!(req("clone", "cpu").as_deref(), Some("50m"));
    assert_eq!(
        container_of(&r, "clone").image.as_deref(),
        Some("registry.example.com/plugin-git:2.6")
    );
    let search = spec
        .dns_config
        .as_ref()
        .and_then(|d| d.searches.clone())
        .expect("searches");
    assert!(search[0].ends_with(".ci.svc.k8s.internal"), "{search:?}");
    let ann = r
        .pod("build")
        .and_then(|p| p.metadata.annotations.clone())
        .expect("annotations");
    assert_eq!(
        ann.get("piculet.dev/pull-policies").map(String::as_str),
        Some("IfNotPresent,Always")
    );
}

#[test]
fn restricted_profile() {
    let config = config(&[("pod_security", "restricted")]);
    let yaml = "services: [{name: db, image: postgres}]\nsteps:\n  - {name: build, image: golang, commands: [go build]}\n  - {name: user, image: golang, commands: [id], backend_options: {kubernetes: {securityContext: {runAsUser: 1000, runAsGroup: 1000, capabilities: {drop: [NET_ADMIN]}}}}}\n";
    let r = render_ok(&config, &input(plan_with(yaml, &[], true)));
    insta::assert_yaml_snapshot!(
        r.pod("build")
            .and_then(|p| p.spec.as_ref())
            .map(|s| (&s.security_context, &s.containers[0].security_context))
    );
    for p in &r.pods {
        assert_eq!(pss::check(&p.pod, Level::Restricted), []);
    }
}

/// Non-root pods get a user and group of their own unless the step names them, so images
/// whose user is root (most CI images) still start; the clone and service pods too.
#[test]
fn non_root_pods_run_as_the_configured_user_unless_the_step_says_otherwise() {
    let yaml = "services: [{name: db, image: postgres}]\nsteps:\n  - {name: build, image: golang, commands: [go build]}\n  - {name: own, image: golang, commands: [id], backend_options: {kubernetes: {securityContext: {runAsUser: 4000, fsGroup: 5000}}}}\n";
    let ids = |r: &RenderedWorkflow, step: &str| {
        let sc = r
            .pod(step)
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.security_context.clone())
            .expect("pod security context");
        (
            sc.run_as_user,
            sc.run_as_group,
            sc.fs_group,
            sc.run_as_non_root,
        )
    };
    for profile in [("pod_security", "restricted"), ("secctx_nonroot", "true")] {
        let r = render_ok(&config(&[profile]), &input(plan_with(yaml, &[], true)));
        for step in ["clone", "build", "db"] {
            assert_eq!(
                ids(&r, step),
                (Some(1000), Some(1000), Some(1000), Some(true)),
                "{profile:?} {step}"
            );
        }
        assert_eq!(
            ids(&r, "own"),
            (Some(4000), Some(1000), Some(5000), Some(true)),
            "{profile:?}"
        );
    }
    let custom = config(&[
        ("pod_security", "restricted"),
        ("run_as_user", "2000"),
        ("run_as_group", "3000"),
    ]);
    let r = render_ok(&custom, &input(plan_with(yaml, &[], true)));
    assert_eq!(
        ids(&r, "build"),
        (Some(2000), Some(3000), Some(3000), Some(true))
    );
    // `image`: the image's own user, checked by the kubelet.
    let image = config(&[
        ("pod_security", "restricted"),
        ("run_as_user", "image"),
        ("run_as_group", "image"),
    ]);
    let r = render_ok(&image, &input(plan_with(yaml, &[], true)));
    assert_eq!(ids(&r, "build"), (None, None, Some(1000), Some(true)));
    // Baseline without SECCTX_NONROOT leaves the user to the image.
    let r = render_ok(&config(&[]), &input(plan_with(yaml, &[], true)));
    assert_eq!(ids(&r, "build"), (None, None, None, None));
}

#[test]
fn resource_defaults_maxima_and_clamping() {
    let config = config(&[
        ("cpu_request", "1"),
        ("cpu_request_max", "2"),
        ("memory_limit_max", "4Gi"),
        ("service_memory_limit_max", "512Mi"),
    ]);
    // A step limit below the default request: the request becomes the limit.
    let yaml = "steps: [{name: small, image: alpine, commands: [ls], backend_options: {kubernetes: {resources: {limits: {cpu: 500m, nvidia.com/gpu: '1'}}}}}]";
    let r = render_ok(&config, &input(plan(yaml)));
    insta::assert_yaml_snapshot!(container_of(&r, "small").resources);
}

#[test]
fn namespace_override() {
    let yaml = "steps: [{name: a, image: alpine, commands: [ls]}]";
    let mut input = input(plan(yaml));
    input.namespace = Some("ci-acme".into());
    let r = render_ok(&config(&[("namespace_overwrite_allowed", "ci-.*")]), &input);
    assert_eq!(r.namespace, "ci-acme");
    assert_eq!(r.workspace.metadata.namespace.as_deref(), Some("ci-acme"));
    // The configured namespace itself needs no permission.
    input.namespace = Some("piculet".into());
    assert_eq!(render_ok(&config(&[]), &input).namespace, "piculet");
}

#[test]
fn hostname_clash_is_refused() {
    let yaml = "services: [{name: 'My DB', image: postgres}]\nsteps: [{name: my-db, image: alpine, commands: [ls]}]";
    let v = refused(&config(&[]), &input(plan(yaml)));
    assert_eq!(
        v[0].message,
        "step \"my-db\": name \"my-db\" has the same hostname \"my-db\" as \"My DB\"; rename one of them"
    );
}

#[test]
fn long_odd_and_unicode_names() {
    let long = "x".repeat(100);
    let yaml = format!(
        "services: [{{name: 'Postgres DB', image: postgres}}]\nsteps:\n  - {{name: '{long}', image: alpine, commands: [ls]}}\n  - {{name: '日本語のステップ', image: alpine, commands: [ls]}}\n  - {{name: 'Build & Test', image: alpine, commands: [ls]}}\n  - {{name: '42', image: alpine, commands: [ls]}}\n"
    );
    let r = render_ok(&config(&[]), &input(plan(&yaml)));
    let names: Vec<(String, String)> = r
        .pods
        .iter()
        .map(|p| {
            (
                p.pod.metadata.name.clone().unwrap_or_default(),
                p.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.hostname.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    insta::assert_yaml_snapshot!(names);
    assert_eq!(
        r.pod("日本語のステップ")
            .and_then(|p| p.metadata.annotations.as_ref())
            .and_then(|a| a.get("piculet.dev/step-name"))
            .map(String::as_str),
        Some("日本語のステップ")
    );
}

// ---- refusals ------------------------------------------------------------------------------

#[test]
fn the_brief_s_service_account_message() {
    let yaml = "steps: [{name: build, image: alpine, commands: [ls], backend_options: {kubernetes: {serviceAccountName: admin}}}]";
    let v = refused(&config(&[]), &input(plan(yaml)));
    assert_eq!(
        v,
        [PolicyViolation {
            step: "build".into(),
            field: "backend_options.kubernetes.serviceAccountName".into(),
            value: "admin".into(),
            rule: "PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED".into(),
            message: "step \"build\": backend_options.kubernetes.serviceAccountName \"admin\" is not allowed: PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED is empty; ask the administrator to allow it".into(),
            ..Default::default()
        }]
    );
    let v = refused(
        &config(&[("service_account_overwrite_allowed", "ci-.*")]),
        &input(plan(yaml)),
    );
    assert_eq!(
        v[0].message,
        "step \"build\": backend_options.kubernetes.serviceAccountName \"admin\" is not allowed: it does not match PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED (ci-.*); choose a value it matches or ask the administrator to allow it"
    );
}

#[test]
fn every_step_option_refused_by_default() {
    let mut input = input(plan(include_str!("testdata/every_option.yaml")));
    input.workflow.steps[0].volumes = vec![
        "cache:/cache".into(),
        "/var/run/docker.sock:/var/run/docker.sock".into(),
    ];
    input.workflow.steps[0].privileged = true;
    let v = refused(&config(&[]), &input);
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn baseline_refusals() {
    let yaml = "steps:\n  - {name: a, image: alpine, commands: [ls], backend_options: {kubernetes: {securityContext: {seccompProfile: {type: Unconfined}, apparmorProfile: {type: Unconfined}}}}}\n  - {name: b, image: alpine, commands: [ls], privileged: true}\n";
    let v = refused(
        &config(&[("privileged_images", "docker.io/library/docker*")]),
        &input(plan(yaml)),
    );
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn restricted_refusals() {
    let yaml = "steps:\n  - {name: a, image: alpine, commands: [ls], privileged: true, backend_options: {kubernetes: {securityContext: {runAsNonRoot: false, runAsUser: 0, allowPrivilegeEscalation: true}}}}\n";
    let v = refused(
        &config(&[("pod_security", "restricted")]),
        &input(plan(yaml)),
    );
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn resource_maxima_refusals() {
    let config = config(&[
        ("cpu_limit_max", "2"),
        ("memory_request_max", "1Gi"),
        ("ephemeral_storage_limit_max", "5Gi"),
        ("service_cpu_request_max", "500m"),
    ]);
    let yaml = "services: [{name: db, image: postgres, backend_options: {kubernetes: {resources: {requests: {cpu: '1'}}}}}]\nsteps: [{name: big, image: alpine, commands: [ls], backend_options: {kubernetes: {resources: {requests: {memory: 2Gi, cpu: '3'}, limits: {cpu: '2500m', ephemeral-storage: 6Gi}}}}}]";
    let v = refused(&config, &input(plan(yaml)));
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn format_refusals() {
    let yaml = "services: [{name: db, image: postgres, ports: ['99999', '53/dns']}]\nsteps: [{name: a, image: alpine, commands: [ls], extra_hosts: ['nocolon', 'h:not-an-ip'], dns: ['x'], volumes: ['Bad_Claim:/x', 'c:/x']}]";
    let mut plan = plan(yaml);
    // Submission refuses a relative mount path; the renderer still does, should one get here.
    plan.steps[0].volumes[1] = "c:relative".into();
    let v = refused(&config(&[("allowed_claims", "*")]), &input(plan));
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn reserved_and_invalid_labels_annotations_and_namespace() {
    let yaml = "steps: [{name: a, image: alpine, commands: [ls], backend_options: {kubernetes: {labels: {piculet.dev/step: x, 'bad key': v}, annotations: {piculet.dev/step-name: x, other.example.com/x: y}}}}]";
    let mut input = input(plan(yaml));
    input.namespace = Some("other".into());
    let v = refused(
        &config(&[
            ("allow_from_step", "labels"),
            ("annotations_overwrite_allowed", "ci\\.example\\.com/.*"),
        ]),
        &input,
    );
    insta::assert_yaml_snapshot!(v);
}

#[test]
fn missing_secret_in_render_input() {
    let yaml =
        "steps: [{name: a, image: alpine, commands: [ls], environment: {T: {from_secret: token}}}]";
    let v = refused(&config(&[]), &input(plan_with(yaml, &["token"], false)));
    assert_eq!(
        v[0].message,
        "step \"a\": environment.T.from_secret \"token\" is not a secret of the submission; add it to the submission's secrets"
    );
}

// ---- documentation examples ----------------------------------------------------------------

#[test]
fn woodpecker_documentation_examples() {
    let config = config(&[
        ("allow_from_step", ALL_ALLOWED),
        ("allowed_claims", "woodpecker-cache"),
        ("privileged_images", "alpine"),
    ]);
    let r = render_ok(
        &config,
        &input(plan(include_str!("testdata/woodpecker_docs.yaml"))),
    );
    insta::assert_yaml_snapshot!(r.pods.iter().map(|p| &p.pod).collect::<Vec<_>>());

    let res = container_of(&r, "My kubernetes step")
        .resources
        .clone()
        .expect("resources");
    assert_eq!(
        res.requests
            .as_ref()
            .and_then(|m| m.get("memory"))
            .map(|q| q.0.as_str()),
        Some("200Mi")
    );
    assert_eq!(
        res.limits
            .as_ref()
            .and_then(|m| m.get("cpu"))
            .map(|q| q.0.as_str()),
        Some("1000m")
    );
    let build = spec_of(&r, "build");
    assert_eq!(
        build.service_account_name.as_deref(),
        Some("my-service-account")
    );
    let ns = build.node_selector.clone().expect("nodeSelector");
    assert_eq!(
        ns.get("beta.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("Standard_D2_v3")
    );
    assert_eq!(
        ns.get("kubernetes.io/arch").map(String::as_str),
        Some("amd64")
    );
    let t = &build.tolerations.as_ref().expect("tolerations")[0];
    assert_eq!(
        (
            t.key.as_deref(),
            t.operator.as_deref(),
            t.value.as_deref(),
            t.effect.as_deref(),
            t.toleration_seconds
        ),
        (
            Some("key1"),
            Some("Equal"),
            Some("value1"),
            Some("NoExecute"),
            Some(3600)
        )
    );
    let cache = container_of(&r, "Restore Cache");
    assert!(
        cache
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/woodpecker/src/cache")
    );
    assert_eq!(
        env_of(&r, "Restore Cache")["PLUGIN_MOUNT"],
        "[\"woodpecker-cache\"]"
    );
    // "the properties will be set at the Pod level … privileged on the container".
    let test = spec_of(&r, "test");
    assert_eq!(
        test.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(999)
    );
    assert_eq!(
        test.security_context.as_ref().and_then(|s| s.run_as_group),
        Some(999)
    );
    assert_eq!(
        test.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true)
    );
    let seccomp = spec_of(&r, "seccomp")
        .security_context
        .clone()
        .and_then(|s| s.seccomp_profile)
        .expect("seccomp");
    assert_eq!(
        (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
        ("Localhost", Some("profiles/audit.json"))
    );
    let aa = spec_of(&r, "apparmor")
        .security_context
        .clone()
        .and_then(|s| s.app_armor_profile)
        .expect("apparmor");
    assert_eq!(
        aa.localhost_profile.as_deref(),
        Some("k8s-apparmor-example-deny-write")
    );
    let meta = &r.pod("annotated").expect("pod").metadata;
    assert_eq!(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get("io.kubernetes.cri-o.Devices"))
            .map(String::as_str),
        Some("/dev/fuse")
    );
    assert_eq!(
        meta.labels
            .as_ref()
            .and_then(|a| a.get("app.kubernetes.io/name"))
            .map(String::as_str),
        Some("builder")
    );
}

/// The toleration of Woodpecker's documentation as written (`NoSchedule` with
/// `tolerationSeconds`) is what a real API server refused in recording 82: refused here with
/// its field path and its words, traced to the step's toleration.
#[test]
fn the_documentations_toleration_is_refused_as_the_api_server_refuses_it() {
    let yaml = "steps:\n  - name: build\n    image: golang\n    commands: [go build]\n    backend_options:\n      kubernetes:\n        tolerations:\n          - key: 'key1'\n            operator: 'Equal'\n            value: 'value1'\n            effect: 'NoSchedule'\n            tolerationSeconds: 3600\n";
    let allowed = config(&[("allow_from_step", ALL_ALLOWED)]);
    let v = invalid(&allowed, &input(plan(yaml)));
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].step, "build");
    assert_eq!(v[0].field, "spec.tolerations[0].effect");
    assert_eq!(v[0].value, "NoSchedule");
    assert_eq!(
        v[0].rule,
        "effect must be 'NoExecute' when `tolerationSeconds` is set"
    );
    assert_eq!(
        v[0].origin,
        Some(trace::Origin::Step(
            "backend_options.kubernetes.tolerations[0].effect".into()
        ))
    );
    let pod = render_workflow(
        &allowed,
        &input(plan(
            "steps: [{name: build, image: golang, commands: [go build]}]",
        )),
    );
    assert!(pod.is_ok(), "the same step without the toleration renders");
    insta::assert_snapshot!(v[0].message);
    // An administrator's toleration comes first in the pod; the step's index is its own.
    let with_admin = config(&[
        ("allow_from_step", ALL_ALLOWED),
        (
            "tolerations",
            "[{\"key\":\"ci\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]",
        ),
    ]);
    let v = invalid(&with_admin, &input(plan(yaml)));
    assert_eq!(v[0].field, "spec.tolerations[1].effect");
    assert_eq!(
        v[0].origin,
        Some(trace::Origin::Step(
            "backend_options.kubernetes.tolerations[0].effect".into()
        ))
    );
}

#[test]
fn gitlab_runner_documentation_example() {
    let config = config(&[
        ("service_account_overwrite_allowed", "ci-.*"),
        ("annotations_overwrite_allowed", "ci\\.example\\.com/.*"),
        ("allow_from_step", "nodeSelector"),
        ("cpu_request_max", "2"),
        ("memory_limit_max", "4Gi"),
        ("service_cpu_request_max", "1"),
    ]);
    let r = render_ok(
        &config,
        &input(plan(include_str!("testdata/gitlab_docs.yaml"))),
    );
    insta::assert_yaml_snapshot!(r.pods.iter().map(|p| &p.pod).collect::<Vec<_>>());
    let test = spec_of(&r, "test");
    assert_eq!(test.service_account_name.as_deref(), Some("ci-deployer"));
    assert_eq!(
        test.node_selector
            .as_ref()
            .and_then(|n| n.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        spec_of(&r, "postgres").hostname.as_deref(),
        Some("postgres")
    );
    assert_eq!(
        env_of(&r, "test")["DATABASE_URL"],
        "postgres://postgres:ci@postgres:5432/test"
    );
}

#[test]
fn drone_documentation_example() {
    let config = config(&[
        (
            "allow_from_step",
            "nodeSelector,tolerations,serviceAccountName",
        ),
        ("privileged_images", "plugins/docker"),
    ]);
    let mut input = input(plan_with(
        include_str!("testdata/drone_docs.yaml"),
        &["docker_password"],
        false,
    ));
    input
        .secrets
        .insert("docker_password".into(), SECRET_VALUE.into());
    let r = render_ok(&config, &input);
    insta::assert_yaml_snapshot!(r.pods.iter().map(|p| &p.pod).collect::<Vec<_>>());
    let greeting = spec_of(&r, "greeting");
    assert_eq!(greeting.service_account_name.as_deref(), Some("builder"));
    assert_eq!(
        greeting
            .node_selector
            .as_ref()
            .and_then(|n| n.get("keyA"))
            .map(String::as_str),
        Some("valueA")
    );
    assert_eq!(greeting.tolerations.as_ref().map(|t| t.len()), Some(1));
    let publish = container_of(&r, "publish");
    assert_eq!(
        publish.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    assert_eq!(
        env_of(&r, "publish")["PLUGIN_PASSWORD"]["secretKeyRef"]["key"],
        "docker_password"
    );
    assert_eq!(spec_of(&r, "cache").hostname.as_deref(), Some("cache"));
}

// ---- settings ------------------------------------------------------------------------------

#[test]
fn defaults_of_every_setting() {
    let c = config(&[]);
    assert_eq!(c.namespace, "piculet");
    assert_eq!(c.volume_size.as_str(), "10G");
    assert!(c.storage_rwx);
    assert_eq!(c.pod_security, PodSecurity::Baseline);
    assert!(
        c.allow_from_step.is_empty()
            && c.privileged_images.is_empty()
            && c.allowed_claims.is_empty()
    );
    assert!(
        c.namespace_overwrite_allowed.is_none()
            && c.service_account_overwrite_allowed.is_none()
            && c.annotations_overwrite_allowed.is_none()
    );
    assert_eq!(c.start_timeout, std::time::Duration::from_secs(180));
    assert_eq!(c.log_retry_timeout, std::time::Duration::from_secs(300));
    assert_eq!((c.run_as_user, c.run_as_group), (Some(1000), Some(1000)));
    assert_eq!(c.clone_image, "docker.io/woodpeckerci/plugin-git:2.6");
    assert!(!c.keep_failed_pods && !c.secctx_nonroot);
    assert_eq!((c.qps, c.burst), (20.0, 40));
    assert_eq!(c.cluster_domain, "cluster.local");
    assert!(c.pull_policies.is_empty());
}

#[test]
fn settings_errors_are_one_exact_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("namespace", "Bad_NS")],
            "--k8s-namespace (PICULET_K8S_NAMESPACE): \"Bad_NS\" is not a namespace name: lowercase letters, digits and '-', at most 63 characters",
        ),
        (
            &[("volume_size", "ten gigs")],
            "--k8s-volume-size (PICULET_K8S_VOLUME_SIZE): \"ten gigs\" is not a quantity; write one such as \"500m\", \"2\" or \"1Gi\"",
        ),
        (
            &[("storage_rwx", "maybe")],
            "--k8s-storage-rwx (PICULET_K8S_STORAGE_RWX): \"maybe\" is not a boolean; write true or false",
        ),
        (
            &[("service_account_overwrite_allowed", "(ci")],
            "--k8s-service-account-overwrite-allowed (PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED): \"(ci\" is not a regular expression (unclosed group); write one such as ^ci-.*$, or leave it empty to disable",
        ),
        (
            &[("allow_from_step", "nodeSelectr")],
            "--k8s-allow-from-step (PICULET_K8S_ALLOW_FROM_STEP): \"nodeSelectr\" is not a step field piculet can allow; did you mean \"nodeSelector\"? write some of nodeSelector, tolerations, affinity, serviceAccountName, runtimeClassName, labels, annotations, hostUsers, secrets",
        ),
        (
            &[("pod_security", "privileged")],
            "--k8s-pod-security (PICULET_K8S_POD_SECURITY): \"privileged\" is not a Pod Security Standard piculet meets; write baseline or restricted",
        ),
        (
            &[("privileged_images", "a[")],
            "--k8s-privileged-images (PICULET_K8S_PRIVILEGED_IMAGES): \"a[\" is not a glob pattern (error parsing glob 'a[': unclosed character class; missing ']'); write patterns such as docker.io/plugins/*, separated by commas",
        ),
        (
            &[("cpu_request", "2"), ("cpu_request_max", "1")],
            "--k8s-cpu-request (PICULET_K8S_CPU_REQUEST): the default 2 is above the maximum 1 of PICULET_K8S_CPU_REQUEST_MAX; lower one or raise the other",
        ),
        (
            &[
                ("service_memory_request", "2Gi"),
                ("service_memory_limit", "1Gi"),
            ],
            "--k8s-service-memory-request (PICULET_K8S_SERVICE_MEMORY_REQUEST): the default request 2Gi is above the default limit 1Gi of PICULET_K8S_SERVICE_MEMORY_LIMIT; a request cannot exceed its limit",
        ),
        (
            &[("clone_ephemeral_storage_limit_max", "lots")],
            "--k8s-clone-ephemeral-storage-limit-max (PICULET_K8S_CLONE_EPHEMERAL_STORAGE_LIMIT_MAX): \"lots\" is not a quantity; write one such as \"500m\", \"2\" or \"1Gi\"",
        ),
        (
            &[("pull_policy", "always,sometimes")],
            "--k8s-pull-policy (PICULET_K8S_PULL_POLICY): \"sometimes\" is not a pull policy; write Always, IfNotPresent or Never, separated by commas",
        ),
        (
            &[("dns_policy", "None")],
            "--k8s-dns-policy (PICULET_K8S_DNS_POLICY): None needs at least one nameserver in --k8s-dns-config (PICULET_K8S_DNS_CONFIG)",
        ),
        (
            &[("dns_config", "{\"nameserver\":[]}")],
            "--k8s-dns-config (PICULET_K8S_DNS_CONFIG): invalid DNS config (unknown field `nameserver`, expected one of `nameservers`, `searches`, `options` at line 1 column 13); write a JSON object such as {\"nameservers\":[\"10.0.0.10\"],\"searches\":[\"ci.example.com\"],\"options\":[{\"name\":\"ndots\",\"value\":\"2\"}]}",
        ),
        (
            &[("termination_grace_period", "soon")],
            "--k8s-termination-grace-period (PICULET_K8S_TERMINATION_GRACE_PERIOD): invalid duration \"soon\": expected a duration such as \"10m\" or \"1h30m\"",
        ),
        (
            &[("run_as_user", "0")],
            "--k8s-run-as-user (PICULET_K8S_RUN_AS_USER): 0 is root, which non-root pods cannot run as; write a non-zero id or image",
        ),
        (
            &[("run_as_group", "staff")],
            "--k8s-run-as-group (PICULET_K8S_RUN_AS_GROUP): \"staff\" is not an id; write a number from 1 to 4294967295, or image",
        ),
        (
            &[("log_retry_timeout", "0s")],
            "--k8s-log-retry-timeout (PICULET_K8S_LOG_RETRY_TIMEOUT): invalid duration \"0s\": must be more than zero",
        ),
        (
            &[("start_timeout", "0s")],
            "--k8s-start-timeout (PICULET_K8S_START_TIMEOUT): invalid duration \"0s\": must be more than zero",
        ),
        (
            &[("pod_labels", "a=b,c")],
            "--k8s-pod-labels (PICULET_K8S_POD_LABELS): \"c\" has no '='; write key=value,key=value or a JSON object",
        ),
        (
            &[("pod_labels", "piculet.dev/x=y")],
            "--k8s-pod-labels (PICULET_K8S_POD_LABELS): \"piculet.dev/x\" is piculet's own key; choose another",
        ),
        (
            &[("pod_labels", "a=b c")],
            "--k8s-pod-labels (PICULET_K8S_POD_LABELS): \"b c\" is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ),
        (
            &[("tolerations", "[{\"operator\":\"Maybe\"}]")],
            "--k8s-tolerations (PICULET_K8S_TOLERATIONS): operator \"Maybe\" is not Exists or Equal",
        ),
        (
            &[(
                "volumes",
                "[{\"name\":\"x\",\"type\":\"nfs\",\"mount_path\":\"/x\"}]",
            )],
            "--k8s-volumes (PICULET_K8S_VOLUMES): volume \"x\": type \"nfs\" is not one of host_path, pvc, config_map, secret, empty_dir, csi",
        ),
        (
            &[(
                "volumes",
                "[{\"name\":\"x\",\"type\":\"pvc\",\"mount_path\":\"/x\"}]",
            )],
            "--k8s-volumes (PICULET_K8S_VOLUMES): volume \"x\": type pvc needs \"claim_name\"",
        ),
        (
            &[(
                "volumes",
                "[{\"name\":\"x\",\"type\":\"pvc\",\"claim_name\":\"c\",\"driver\":\"d\",\"mount_path\":\"/x\"}]",
            )],
            "--k8s-volumes (PICULET_K8S_VOLUMES): volume \"x\": \"driver\" does not apply to type pvc",
        ),
        (
            &[(
                "volumes",
                "[{\"name\":\"workspace\",\"type\":\"empty_dir\",\"mount_path\":\"/x\"}]",
            )],
            "--k8s-volumes (PICULET_K8S_VOLUMES): volume \"workspace\": the name must be a DNS label (lowercase letters, digits and '-') other than workspace, claim-* and secret-*",
        ),
        (
            &[
                ("pod_security", "restricted"),
                ("privileged_images", "docker"),
            ],
            "--k8s-privileged-images (PICULET_K8S_PRIVILEGED_IMAGES): privileged containers break the restricted Pod Security Standard; leave this empty or set PICULET_K8S_POD_SECURITY=baseline",
        ),
        (
            &[
                ("pod_security", "restricted"),
                (
                    "volumes",
                    "[{\"name\":\"d\",\"type\":\"host_path\",\"path\":\"/d\",\"mount_path\":\"/d\"}]",
                ),
            ],
            "--k8s-volumes (PICULET_K8S_VOLUMES): volume \"d\": host_path volumes break the restricted Pod Security Standard; use another type or set PICULET_K8S_POD_SECURITY=baseline",
        ),
        (
            &[("qps", "-1")],
            "--k8s-qps (PICULET_K8S_QPS): \"-1\" is not a positive number of requests per second",
        ),
        (
            &[("burst", "0")],
            "--k8s-burst (PICULET_K8S_BURST): \"0\" is not a positive whole number",
        ),
        (
            &[("pull_secret_names", "ok,Not_OK")],
            "--k8s-pull-secret-names (PICULET_K8S_PULL_SECRET_NAMES): \"Not_OK\" is not a Secret name: lowercase letters, digits, '-' and '.'",
        ),
        (
            &[(
                "tolerations",
                "[{\"key\":\"ci\",\"operator\":\"Equal\",\"value\":\"x\",\"effect\":\"NoSchedule\",\"tolerationSeconds\":60}]",
            )],
            "--k8s-tolerations (PICULET_K8S_TOLERATIONS): the Kubernetes API server would refuse every workflow's objects with it: spec.tolerations[0].effect \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
        ),
        (
            &[("clone_image", "a b")],
            "--k8s-clone-image (PICULET_K8S_CLONE_IMAGE): \"a b\" is not an image reference: it contains white space",
        ),
    ];
    for (pairs, want) in cases {
        let got = setting_error(pairs);
        assert_eq!(&got, want);
        assert!(!got.contains('\n'));
    }
}

#[test]
fn help_lists_every_setting_and_toml_uses_snake_case() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        k8s: KubernetesSettings,
    }
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    let fields = serde_json::to_value(KubernetesSettings::default()).expect("json");
    let fields = fields.as_object().expect("object");
    assert_eq!(fields.len(), 72);
    for name in fields.keys() {
        let env = settings::env_name(name);
        assert!(help.contains(&env), "--help does not list {env}");
        assert!(
            help.contains(&format!("--k8s-{}", name.replace('_', "-"))),
            "{name}"
        );
    }
    for env in [
        "PICULET_K8S_CPU_REQUEST_MAX",
        "PICULET_K8S_SERVICE_EPHEMERAL_STORAGE_LIMIT",
        "PICULET_K8S_CLONE_MEMORY_LIMIT_MAX",
        "PICULET_K8S_START_TIMEOUT",
        "PICULET_K8S_KEEP_FAILED_PODS",
    ] {
        assert!(help.contains(env), "{env}");
    }
    let from_toml: KubernetesSettings =
        serde_json::from_value(serde_json::json!({"namespace": "ci", "cpu_request_max": "2"}))
            .expect("toml keys");
    assert_eq!(from_toml.cpu_request_max.as_deref(), Some("2"));
    assert!(
        serde_json::from_value::<KubernetesSettings>(serde_json::json!({"nmespace": "ci"}))
            .is_err()
    );
}

#[test]
fn pin_to_node_for_read_write_once() {
    let r = render_ok(
        &config(&[("storage_rwx", "false")]),
        &input(plan("steps: [{name: a, image: alpine, commands: [ls]}]")),
    );
    let mut p = r.pod("a").cloned().expect("pod");
    pod::pin_to_node(&mut p, "node-1");
    let terms = p
        .spec
        .and_then(|s| s.affinity)
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .expect("required");
    assert_eq!(
        serde_json::to_value(&terms).expect("json"),
        serde_json::json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]})
    );
}

/// The repository reaches the clone container as variables of the clone image, never in its
/// command or arguments, where an option-like value would be read by a program: submission
/// validation ([`crate::repo`]) keeps such values out, and this keeps them out of the spec
/// even when they get past it.
#[test]
fn repository_values_reach_the_clone_container_only_as_variables() {
    let hostile = "--upload-pack=touch /tmp/x";
    let workflow = plan_with_repo(
        "steps:\n  - name: build\n    image: golang:1.22\n    commands: [go build]\n",
        &[],
        Some(RepoSpec {
            clone_url: hostile.into(),
            r#ref: hostile.into(),
            sha: hostile.into(),
        }),
    );
    let mut input = input(workflow);
    for name in ["CI_REPO_CLONE_URL", "CI_COMMIT_REF", "CI_COMMIT_SHA"] {
        input.environment.insert(name.into(), hostile.into());
    }
    let r = render_ok(&config(&[]), &input);
    for p in &r.pods {
        let spec = p.pod.spec.as_ref().expect("spec");
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for word in c.command.iter().chain(c.args.iter()).flatten() {
                assert!(!word.contains(hostile), "{}: {word:?}", p.step);
            }
        }
    }
    let clone = container_of(&r, "clone");
    assert!(clone.command.is_none() && clone.args.is_none());
    let env = env_of(&r, "clone");
    for name in ["PLUGIN_REMOTE", "PLUGIN_REF", "PLUGIN_SHA", "CI_COMMIT_REF"] {
        assert_eq!(env[name], hostile, "{name}");
    }
}
