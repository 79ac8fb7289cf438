//! The `Host` check: which names this server answers to.
//!
//! A server without API tokens trusts every local caller, and a web page can become one: its
//! own name, re-pointed at 127.0.0.1 (DNS rebinding), lets the browser send it requests and read
//! the answers. The browser still sends the page's name as `Host`, so a tokenless server only
//! answers loopback names (and those of `PICULET_ALLOWED_HOSTS`), and refuses others with 421.
//! With tokens every request must carry one, so any name is answered unless
//! `PICULET_ALLOWED_HOSTS` is set.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr as _;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Uri, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The probes answer whatever the name: Kubernetes sends the pod's IP as `Host`, and "alive" or
/// "ready" tells a rebinding page nothing.
pub(super) const PROBES: [&str; 2] = ["/api/v1/healthz", "/api/v1/readyz"];

/// One entry of `PICULET_ALLOWED_HOSTS`: a name (or IP literal), or `*.name` for every name
/// under it (not the name itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Under(String),
}

impl HostPattern {
    /// Reads one entry; a port is ignored, since the name is what a rebinding page controls.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let host = Authority::from_str(name)
            .ok()
            .filter(|a| !a.as_str().contains('@') && !a.host().is_empty())
            .map(|a| normalize(a.host()))
            .filter(|h| !h.is_empty() && !h.contains('*'))
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a host name; write names such as ci.example.com, \
                     *.example.com, 10.0.0.5 or [fd00::1], separated by commas"
                )
            })?;
        Ok(match wildcard {
            true => HostPattern::Under(format!(".{host}")),
            false => HostPattern::Exact(host),
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Under(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// Reads `PICULET_ALLOWED_HOSTS`: comma-separated entries, empty ones skipped.
pub fn parse_allowed_hosts(text: &str) -> Result<Vec<HostPattern>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry {
            "*" => Err(
                "\"*\" would answer every name, which is what the check prevents; list the names"
                    .to_string(),
            ),
            _ => HostPattern::parse(entry),
        })
        .collect()
}

/// Which names are answered, built once from the configuration.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// With tokens and no allowed hosts: every name.
    any: bool,
    tokens: bool,
    allowed: Arc<[HostPattern]>,
}

impl HostPolicy {
    pub fn new(tokens: bool, allowed: &[HostPattern]) -> HostPolicy {
        HostPolicy {
            any: tokens && allowed.is_empty(),
            tokens,
            allowed: allowed.into(),
        }
    }

    fn allows(&self, host: &str) -> bool {
        self.any || is_loopback(host) || self.allowed.iter().any(|p| p.matches(host))
    }

    /// Checks every name the request presents: its `Host` and, in absolute form, its target's
    /// authority (which HTTP/1.1 says wins over `Host`, so both must pass).
    pub fn check(&self, version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        let mut values = headers.get_all(header::HOST).iter();
        let from_header = values.next().map(host_of).transpose()?;
        if values.next().is_some() {
            return Err(ApiError::InvalidHeader(
                "the request has more than one Host header; send one".into(),
            ));
        }
        let from_target = uri.authority().map(|a| normalize(a.host()));
        if from_header.is_none() && from_target.is_none() {
            // HTTP/1.0 may leave the name out (and a browser never does); HTTP/1.1 must not.
            return match version {
                Version::HTTP_09 | Version::HTTP_10 => Ok(()),
                _ => Err(ApiError::InvalidHeader(
                    "the request has no Host header; HTTP/1.1 requires one naming the server"
                        .into(),
                )),
            };
        }
        match [from_target, from_header]
            .into_iter()
            .flatten()
            .find(|host| !self.allows(host))
        {
            None => Ok(()),
            Some(refused) => Err(ApiError::MisdirectedRequest(self.refusal(&refused))),
        }
    }

    fn refusal(&self, host: &str) -> String {
        let shown = shorten(host);
        match self.tokens {
            false => format!(
                "this server has no PICULET_API_TOKENS, so it answers only loopback names \
                 (localhost, *.localhost, 127.0.0.1, [::1]), not Host {shown:?}; add the name to \
                 PICULET_ALLOWED_HOSTS to serve it"
            ),
            true => format!(
                "Host {shown:?} is neither a loopback name nor one of PICULET_ALLOWED_HOSTS; \
                 add it there to serve it"
            ),
        }
    }
}

/// The middleware: refuses a request for a name this server does not answer to.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !PROBES.contains(&request.uri().path())
        && let Err(refused) = state
            .hosts
            .check(request.version(), request.uri(), request.headers())
    {
        return refused.into_response();
    }
    next.run(request).await
}

/// The name of a `Host` value, without its port.
fn host_of(value: &HeaderValue) -> Result<String, ApiError> {
    let malformed = || {
        ApiError::InvalidHeader(
            "the Host header is not a host name with an optional port, e.g. localhost:8080".into(),
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    let authority = Authority::from_str(text).map_err(|_| malformed())?;
    // A user name has no place in Host, and would hide the name from a careless reader.
    if text.contains('@') || authority.host().is_empty() {
        return Err(malformed());
    }
    Ok(normalize(authority.host()))
}

/// Names compare without case and without the trailing dot of a fully qualified name.
fn normalize(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// `localhost`, a name under `.localhost` (which browsers resolve to loopback themselves),
/// 127.0.0.0/8 and `[::1]` (also as `[::ffff:127.x.y.z]`).
fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return ip.is_loopback();
    }
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
        .is_some_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        })
}

/// A hostile name may be long; the message shows its start.
fn shorten(host: &str) -> String {
    const SHOWN: usize = 100;
    match host.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &host[..at]),
        None => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    fn check(policy: &HostPolicy, host: &str) -> Result<(), ApiError> {
        policy.check(
            Version::HTTP_11,
            &Uri::from_static("/api/v1/lint"),
            &headers(&[host]),
        )
    }

    fn patterns(text: &str) -> Vec<HostPattern> {
        parse_allowed_hosts(text).unwrap()
    }

    #[test]
    fn loopback_names() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "ci.localhost:1",
            "127.0.0.1",
            "127.3.2.1:80",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(check(&HostPolicy::new(false, &[]), host).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "0.0.0.0:8080",
            "10.0.0.1",
            "[::2]",
            "128.0.0.1",
        ] {
            assert!(
                matches!(
                    check(&HostPolicy::new(false, &[]), host),
                    Err(ApiError::MisdirectedRequest(_))
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn the_refusal_names_the_host_and_the_setting() {
        let Err(refused) = check(&HostPolicy::new(false, &[]), "evil.example:8080") else {
            panic!("accepted");
        };
        let detail = refused.to_string();
        assert!(detail.contains("\"evil.example\""), "{detail}");
        assert!(detail.contains("PICULET_ALLOWED_HOSTS"), "{detail}");
        assert!(detail.contains("PICULET_API_TOKENS"), "{detail}");
        let long = format!("{}.example", "a".repeat(5000));
        let Err(refused) = check(&HostPolicy::new(false, &[]), &long) else {
            panic!("accepted");
        };
        assert!(refused.to_string().len() < 400, "{refused}");
    }

    #[test]
    fn allowed_hosts_extend_the_loopback_names() {
        let policy = HostPolicy::new(false, &patterns(" ci.example.com:443, *.build.example ,"));
        for host in [
            "ci.example.com",
            "CI.Example.com.:8080",
            "a.build.example",
            "a.b.build.example",
            "localhost",
        ] {
            assert!(check(&policy, host).is_ok(), "{host}");
        }
        for host in [
            "example.com",
            "build.example",
            "xbuild.example",
            "evil.example",
        ] {
            assert!(check(&policy, host).is_err(), "{host}");
        }
    }

    #[test]
    fn tokens_answer_any_name_unless_hosts_are_listed() {
        assert!(check(&HostPolicy::new(true, &[]), "evil.example").is_ok());
        let listed = HostPolicy::new(true, &patterns("ci.example.com"));
        assert!(check(&listed, "ci.example.com").is_ok());
        assert!(check(&listed, "127.0.0.1:8080").is_ok());
        let Err(refused) = check(&listed, "evil.example") else {
            panic!("accepted");
        };
        assert!(
            refused.to_string().contains("PICULET_ALLOWED_HOSTS"),
            "{refused}"
        );
    }

    #[test]
    fn the_target_authority_is_checked_too() {
        let policy = HostPolicy::new(false, &[]);
        let absolute = Uri::from_static("http://evil.example/api/v1/lint");
        assert!(
            policy
                .check(Version::HTTP_11, &absolute, &headers(&["localhost"]))
                .is_err()
        );
        let absolute = Uri::from_static("http://localhost:8080/api/v1/lint");
        assert!(
            policy
                .check(Version::HTTP_11, &absolute, &headers(&["localhost"]))
                .is_ok()
        );
        assert!(
            policy
                .check(Version::HTTP_11, &absolute, &HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn missing_doubled_or_malformed_hosts() {
        let policy = HostPolicy::new(false, &[]);
        let origin = Uri::from_static("/api/v1/lint");
        assert!(
            policy
                .check(Version::HTTP_10, &origin, &HeaderMap::new())
                .is_ok()
        );
        for (version, headers) in [
            (Version::HTTP_11, HeaderMap::new()),
            (Version::HTTP_11, headers(&["localhost", "localhost"])),
            (Version::HTTP_11, headers(&["user@localhost"])),
            (Version::HTTP_11, headers(&["local host"])),
            (Version::HTTP_11, headers(&[""])),
            (Version::HTTP_10, headers(&[":8080"])),
        ] {
            assert!(
                matches!(
                    policy.check(version, &origin, &headers),
                    Err(ApiError::InvalidHeader(_))
                ),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn allowed_hosts_setting() {
        assert_eq!(
            patterns("Ci.Example.com:8443,*.example.org,[FD00::1]:80,10.0.0.5"),
            vec![
                HostPattern::Exact("ci.example.com".into()),
                HostPattern::Under(".example.org".into()),
                HostPattern::Exact("[fd00::1]".into()),
                HostPattern::Exact("10.0.0.5".into()),
            ]
        );
        assert_eq!(patterns(" , "), vec![]);
        for bad in [
            "*",
            "a b",
            "user@host",
            "*.",
            "a.*.example",
            "http://x/",
            ":80",
        ] {
            assert!(parse_allowed_hosts(bad).is_err(), "{bad}");
        }
    }
}
