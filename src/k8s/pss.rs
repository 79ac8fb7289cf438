//! A checker of the Kubernetes Pod Security Standards, written from their documentation
//! (kubernetes.io/docs/concepts/security/pod-security-standards): one function per control,
//! each reading the restricted fields the documentation lists for it. Tests hold every pod
//! piculet renders to the standard in force; the engine may also use it to explain a pod.

use k8s_openapi::api::core::v1::{Pod, PodSpec, SecurityContext};

/// A Pod Security Standard level (privileged has no controls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Restricted,
}

/// A control a pod fails, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub control: &'static str,
    pub detail: String,
}

/// Checks `pod` against every control of `level` (restricted includes baseline). The optional
/// "Non-root groups" control, which Pod Security Admission does not enforce, is separate:
/// [`non_root_groups`].
pub fn check(pod: &Pod, level: Level) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let baseline: [fn(&PodSpec, &Annotations) -> Vec<Finding>; 11] = [
        host_process,
        host_namespaces,
        privileged_containers,
        capabilities_baseline,
        host_path_volumes,
        host_ports,
        apparmor,
        selinux,
        proc_mount,
        seccomp_baseline,
        sysctls,
    ];
    for control in baseline {
        out.extend(control(spec, &annotations));
    }
    if level == Level::Restricted {
        let restricted: [fn(&PodSpec, &Annotations) -> Vec<Finding>; 6] = [
            volume_types,
            privilege_escalation,
            running_as_non_root,
            running_as_non_root_user,
            seccomp_restricted,
            capabilities_restricted,
        ];
        for control in restricted {
            out.extend(control(spec, &annotations));
        }
    }
    out
}

type Annotations = std::collections::BTreeMap<String, String>;

/// A container as the controls see it: name, security context, host ports.
type ContainerView<'a> = (String, Option<&'a SecurityContext>, Vec<Option<i32>>);

/// Every container of the pod (`containers`, `initContainers`, `ephemeralContainers`) with its
/// name, security context and host ports.
fn containers(spec: &PodSpec) -> Vec<ContainerView<'_>> {
    let mut out: Vec<ContainerView<'_>> = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let ports = c.ports.iter().flatten().map(|p| p.host_port).collect();
        out.push((c.name.clone(), c.security_context.as_ref(), ports));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        let ports = c.ports.iter().flatten().map(|p| p.host_port).collect();
        out.push((c.name.clone(), c.security_context.as_ref(), ports));
    }
    out
}

fn finding(control: &'static str, detail: String) -> Finding {
    Finding { control, detail }
}

/// Baseline "HostProcess": Windows HostProcess containers are forbidden.
fn host_process(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.windows_options.as_ref())
        .and_then(|w| w.host_process);
    if pod == Some(true) {
        out.push(finding(
            "HostProcess",
            "spec.securityContext.windowsOptions.hostProcess=true".into(),
        ));
    }
    for (name, sc, _) in containers(spec) {
        if sc
            .and_then(|s| s.windows_options.as_ref())
            .and_then(|w| w.host_process)
            == Some(true)
        {
            out.push(finding(
                "HostProcess",
                format!("container {name}: windowsOptions.hostProcess=true"),
            ));
        }
    }
    out
}

/// Baseline "Host Namespaces": hostNetwork, hostPID and hostIPC must be unset or false.
fn host_namespaces(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ]
    .into_iter()
    .filter(|(_, v)| *v == Some(true))
    .map(|(f, _)| finding("Host Namespaces", format!("spec.{f}=true")))
    .collect()
}

/// Baseline "Privileged Containers": securityContext.privileged must be unset or false.
fn privileged_containers(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    containers(spec)
        .into_iter()
        .filter(|(_, sc, _)| sc.and_then(|s| s.privileged) == Some(true))
        .map(|(n, _, _)| {
            finding(
                "Privileged Containers",
                format!("container {n}: privileged=true"),
            )
        })
        .collect()
}

/// The capabilities baseline allows a container to add.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Baseline "Capabilities": only the default set may be added.
fn capabilities_baseline(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, sc, _) in containers(spec) {
        for cap in sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
        {
            if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                out.push(finding(
                    "Capabilities",
                    format!("container {n}: adds {cap}"),
                ));
            }
        }
    }
    out
}

/// Baseline "HostPath Volumes": forbidden.
fn host_path_volumes(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    spec.volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| {
            finding(
                "HostPath Volumes",
                format!("volume {} is a hostPath", v.name),
            )
        })
        .collect()
}

/// Baseline "Host Ports": hostPort must be unset or 0.
fn host_ports(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, _, ports) in containers(spec) {
        for p in ports.into_iter().flatten() {
            if p != 0 {
                out.push(finding(
                    "Host Ports",
                    format!("container {n}: hostPort {p}"),
                ));
            }
        }
    }
    out
}

/// Baseline "AppArmor": the profile may not be Unconfined (fields), and the annotations may
/// only name `runtime/default` or `localhost/*`.
fn apparmor(spec: &PodSpec, annotations: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    let ok_type = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        && !ok_type(&p.type_)
    {
        out.push(finding(
            "AppArmor",
            format!("spec.securityContext.appArmorProfile.type={}", p.type_),
        ));
    }
    for (n, sc, _) in containers(spec) {
        if let Some(p) = sc.and_then(|s| s.app_armor_profile.as_ref())
            && !ok_type(&p.type_)
        {
            out.push(finding(
                "AppArmor",
                format!("container {n}: appArmorProfile.type={}", p.type_),
            ));
        }
    }
    for (k, val) in annotations {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && val != "runtime/default"
            && !val.starts_with("localhost/")
        {
            out.push(finding("AppArmor", format!("annotation {k}={val}")));
        }
    }
    out
}

/// Baseline "SELinux": type only container_t, container_init_t, container_kvm_t or
/// container_engine_t; user and role unset.
fn selinux(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut check = |who: String, o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        let Some(o) = o else { return };
        let t = o.type_.as_deref().unwrap_or("");
        if ![
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
        .contains(&t)
        {
            out.push(finding(
                "SELinux",
                format!("{who}: seLinuxOptions.type={t}"),
            ));
        }
        if o.user.as_deref().is_some_and(|u| !u.is_empty())
            || o.role.as_deref().is_some_and(|r| !r.is_empty())
        {
            out.push(finding(
                "SELinux",
                format!("{who}: seLinuxOptions sets user or role"),
            ));
        }
    };
    check(
        "pod".into(),
        spec.security_context
            .as_ref()
            .and_then(|s| s.se_linux_options.as_ref()),
    );
    for (n, sc, _) in containers(spec) {
        check(
            format!("container {n}"),
            sc.and_then(|s| s.se_linux_options.as_ref()),
        );
    }
    out
}

/// Baseline "/proc Mount Type": Default or unset.
fn proc_mount(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    containers(spec)
        .into_iter()
        .filter_map(|(n, sc, _)| {
            let p = sc.and_then(|s| s.proc_mount.as_deref())?;
            (p != "Default")
                .then(|| finding("/proc Mount Type", format!("container {n}: procMount={p}")))
        })
        .collect()
}

/// Baseline "Seccomp": the profile may not be Unconfined.
fn seccomp_baseline(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        && p.type_ == "Unconfined"
    {
        out.push(finding(
            "Seccomp",
            "spec.securityContext.seccompProfile.type=Unconfined".into(),
        ));
    }
    for (n, sc, _) in containers(spec) {
        if sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            out.push(finding(
                "Seccomp",
                format!("container {n}: seccompProfile.type=Unconfined"),
            ));
        }
    }
    out
}

/// The sysctls baseline allows.
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Baseline "Sysctls": only the safe set.
fn sysctls(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    spec.security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .filter(|s| !SAFE_SYSCTLS.contains(&s.name.as_str()))
        .map(|s| finding("Sysctls", format!("sysctl {}", s.name)))
        .collect()
}

/// Restricted "Volume Types": only configMap, csi, downwardAPI, emptyDir, ephemeral,
/// persistentVolumeClaim, projected and secret.
fn volume_types(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if !allowed {
            out.push(finding(
                "Volume Types",
                format!("volume {} has a type restricted forbids", v.name),
            ));
        }
    }
    out
}

/// Restricted "Privilege Escalation": allowPrivilegeEscalation must be false.
fn privilege_escalation(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    containers(spec)
        .into_iter()
        .filter(|(_, sc, _)| sc.and_then(|s| s.allow_privilege_escalation) != Some(false))
        .map(|(n, _, _)| {
            finding(
                "Privilege Escalation",
                format!("container {n}: allowPrivilegeEscalation is not false"),
            )
        })
        .collect()
}

/// Restricted "Running as Non-root": runAsNonRoot true on the pod or on every container, and
/// false on none.
fn running_as_non_root(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root);
    let mut out = Vec::new();
    for (n, sc, _) in containers(spec) {
        let c = sc.and_then(|s| s.run_as_non_root);
        if c == Some(false) || (c.is_none() && pod != Some(true)) {
            out.push(finding(
                "Running as Non-root",
                format!("container {n}: runAsNonRoot is not true"),
            ));
        }
    }
    out
}

/// Restricted "Running as Non-root user": runAsUser may not be 0.
fn running_as_non_root_user(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    if spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0) {
        out.push(finding(
            "Running as Non-root user",
            "spec.securityContext.runAsUser=0".into(),
        ));
    }
    for (n, sc, _) in containers(spec) {
        if sc.and_then(|s| s.run_as_user) == Some(0) {
            out.push(finding(
                "Running as Non-root user",
                format!("container {n}: runAsUser=0"),
            ));
        }
    }
    out
}

/// Restricted "Seccomp": RuntimeDefault or Localhost, on the pod or on every container.
fn seccomp_restricted(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    let mut out = Vec::new();
    if pod.is_some_and(|t| !ok(t)) {
        out.push(finding(
            "Seccomp",
            format!(
                "spec.securityContext.seccompProfile.type={}",
                pod.unwrap_or_default()
            ),
        ));
    }
    for (n, sc, _) in containers(spec) {
        match sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str())
        {
            Some(t) if !ok(t) => out.push(finding(
                "Seccomp",
                format!("container {n}: seccompProfile.type={t}"),
            )),
            None if !pod.is_some_and(ok) => out.push(finding(
                "Seccomp",
                format!("container {n}: no seccomp profile on it or the pod"),
            )),
            _ => {}
        }
    }
    out
}

/// Restricted "Capabilities": drop ALL, add at most NET_BIND_SERVICE.
fn capabilities_restricted(spec: &PodSpec, _: &Annotations) -> Vec<Finding> {
    let mut out = Vec::new();
    for (n, sc, _) in containers(spec) {
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        if !caps
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            out.push(finding(
                "Capabilities",
                format!("container {n}: does not drop ALL"),
            ));
        }
        for cap in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                out.push(finding(
                    "Capabilities",
                    format!("container {n}: adds {cap}"),
                ));
            }
        }
    }
    out
}

/// Restricted (optional) "Non-root groups": runAsGroup, supplementalGroups and fsGroup, where
/// set, non-zero. Pod Security Admission does not enforce it; piculet's pods meet it anyway.
pub fn non_root_groups(pod: &Pod) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    if let Some(s) = spec.security_context.as_ref()
        && (s.run_as_group == Some(0)
            || s.fs_group == Some(0)
            || s.supplemental_groups.iter().flatten().any(|g| *g == 0))
    {
        out.push(finding("Non-root groups", "pod uses group 0".into()));
    }
    for (n, sc, _) in containers(spec) {
        if sc.and_then(|s| s.run_as_group) == Some(0) {
            out.push(finding(
                "Non-root groups",
                format!("container {n}: runAsGroup=0"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, Container, HostPathVolumeSource, PodSecurityContext, SeccompProfile, Volume,
    };

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn container(sc: SecurityContext) -> Container {
        Container {
            name: "c".into(),
            security_context: Some(sc),
            ..Default::default()
        }
    }

    fn controls(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.control).collect()
    }

    #[test]
    fn a_plain_root_pod_passes_baseline_not_restricted() {
        // As the recorded PSA answers show (63 allowed under baseline, 60 refused under
        // restricted for exactly these four controls).
        let p = pod(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(check(&p, Level::Baseline).is_empty());
        assert_eq!(
            controls(&check(&p, Level::Restricted)),
            [
                "Privilege Escalation",
                "Running as Non-root",
                "Seccomp",
                "Capabilities"
            ]
        );
    }

    #[test]
    fn each_baseline_control_fires() {
        let p = pod(PodSpec {
            host_network: Some(true),
            volumes: Some(vec![Volume {
                name: "h".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/".into(),
                    type_: None,
                }),
                ..Default::default()
            }]),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "Unconfined".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            containers: vec![container(SecurityContext {
                privileged: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(vec!["SYS_ADMIN".into(), "CHOWN".into()]),
                    drop: None,
                }),
                proc_mount: Some("Unmasked".into()),
                ..Default::default()
            })],
            ..Default::default()
        });
        assert_eq!(
            controls(&check(&p, Level::Baseline)),
            [
                "Host Namespaces",
                "Privileged Containers",
                "Capabilities",
                "HostPath Volumes",
                "/proc Mount Type",
                "Seccomp"
            ]
        );
    }

    #[test]
    fn a_restricted_pod_passes() {
        let p = pod(PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            containers: vec![container(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_BIND_SERVICE".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            })],
            ..Default::default()
        });
        assert_eq!(check(&p, Level::Restricted), []);
        assert_eq!(non_root_groups(&p), []);
    }
}
