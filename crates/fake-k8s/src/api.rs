//! The HTTP face of the fake: routing, the verbs (create, get, list, update,
//! patch, delete, deletecollection), `Status` error bodies, the headers every
//! answer carries, authentication, RBAC, API faults and the request log.
//!
//! One fallback handler parses the path itself instead of axum path
//! extractors: a path or query the fake does not understand must still answer
//! a Kubernetes `Status`, never an axum rejection in another format.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{Map, Value, json};

use super::faults::ApiFailure;
use super::objects;
use super::store::{FieldSelector, LabelSelector, Resource};
use super::{RequestRecord, Shared, kubelet, logs, watch};

/// Largest JSON body the real server sends with `Content-Length`; larger ones
/// go out chunked (Go's net/http buffers 2048 bytes before it starts chunking).
const CONTENT_LENGTH_LIMIT: usize = 2048;

/// A Kubernetes `Status` failure.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// Boxed to keep `Result<_, ApiError>` small.
    pub details: Option<Box<Value>>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String, details: Option<Value>) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message,
            details: details.map(Box::new),
            retry_after: None,
        }
    }

    pub fn not_found(resource: Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.plural()),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    pub fn already_exists(resource: Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.plural()),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    pub fn conflict(resource: Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.plural()
            ),
            Some(json!({"name": name, "kind": resource.plural()})),
        )
    }

    /// 422 with one cause per invalid field: `(field, cause reason, cause message)`.
    pub fn invalid(
        resource: Resource,
        name: &str,
        causes: Vec<(String, &str, String)>,
    ) -> ApiError {
        let parts: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, reason, message)| json!({"reason": reason, "message": message, "field": field}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", resource.kind()),
            Some(json!({"name": name, "kind": resource.kind(), "causes": causes})),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message.into(), None)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message.into(), None)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn forbidden(resource: &str, name: Option<&str>, message_tail: String) -> ApiError {
        let subject = match name {
            Some(n) => format!("{resource} \"{n}\""),
            None => resource.to_string(),
        };
        let mut details = Map::new();
        if let Some(n) = name {
            details.insert("name".into(), json!(n));
        }
        details.insert("kind".into(), json!(resource));
        ApiError::new(
            403,
            "Forbidden",
            format!("{subject} is forbidden: {message_tail}"),
            Some(Value::Object(details)),
        )
    }

    pub fn internal(message: &str) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
            Some(json!({"causes": [{"message": message}]})),
        )
    }

    pub fn too_many_requests(retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.".into(),
            Some(json!({"retryAfterSeconds": retry_after_secs})),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub fn method_not_supported() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn unknown_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    /// The `Status` object, fields in the order the real server writes them.
    pub fn to_status(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        // Go's omitempty: a Status without a reason has no `reason` key
        // (recording 80's 500 from a failed dial to the kubelet).
        if !self.reason.is_empty() {
            m.insert("reason".into(), json!(self.reason));
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), d.as_ref().clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }

    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(status, &self.to_status());
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == 403 && self.reason == "Forbidden" && self.message.contains("cannot ") {
            // RBAC denials carry it; Pod Security refusals (also 403) do not.
            resp.headers_mut().insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
        }
        resp
    }
}

/// A JSON answer framed as the real server frames it: compact JSON plus a
/// newline (Go's json.Encoder), `Content-Length` up to 2048 bytes, chunked above.
pub fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let body = if bytes.len() <= CONTENT_LENGTH_LIMIT {
        Body::from(bytes)
    } else {
        // A stream has no known length, so hyper sends it chunked.
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = bytes
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What a request is about, parsed from its path and method.
#[derive(Clone, Debug)]
enum Target {
    /// `/api/v1/namespaces/{ns}/{resource}` or `/api/v1/{resource}` (ns None).
    Collection {
        resource: Resource,
        ns: Option<String>,
    },
    /// `/api/v1/namespaces/{ns}/{resource}/{name}`.
    Object {
        resource: Resource,
        ns: String,
        name: String,
    },
    /// `/api/v1/namespaces/{ns}/pods/{name}/log`.
    PodLog {
        ns: String,
        name: String,
    },
    /// `/api/v1/namespaces/{ns}/pods/{name}/status`.
    PodStatus {
        ns: String,
        name: String,
    },
    SelfSubjectAccessReview,
    Version,
    Unknown,
}

fn parse_target(path: &str) -> Target {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, res] => match Resource::from_plural(res) {
            Some(resource) => Target::Collection {
                resource,
                ns: Some(ns.to_string()),
            },
            None => Target::Unknown,
        },
        ["api", "v1", "namespaces", ns, "pods", name, "log"] => Target::PodLog {
            ns: ns.to_string(),
            name: name.to_string(),
        },
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => Target::PodStatus {
            ns: ns.to_string(),
            name: name.to_string(),
        },
        ["api", "v1", "namespaces", ns, res, name] => match Resource::from_plural(res) {
            Some(resource) => Target::Object {
                resource,
                ns: ns.to_string(),
                name: name.to_string(),
            },
            None => Target::Unknown,
        },
        ["api", "v1", res] => match Resource::from_plural(res) {
            Some(resource) => Target::Collection { resource, ns: None },
            None => Target::Unknown,
        },
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] => Target::SelfSubjectAccessReview,
        ["version"] => Target::Version,
        _ => Target::Unknown,
    }
}

fn is_true(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The verb and resource an authorizer would see, for the request log, RBAC
/// and fault matching.
fn verb_and_resource(
    method: &Method,
    target: &Target,
    q: &HashMap<String, String>,
) -> (String, String) {
    let (verb, resource) = match target {
        Target::Collection { resource, .. } => {
            let verb = match *method {
                Method::GET if is_true(q, "watch") => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            (verb, resource.plural().to_string())
        }
        Target::Object { resource, .. } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "unknown",
            };
            (verb, resource.plural().to_string())
        }
        Target::PodLog { .. } => ("get", "pods/log".to_string()),
        Target::PodStatus { .. } => ("get", "pods/status".to_string()),
        Target::SelfSubjectAccessReview => ("create", "selfsubjectaccessreviews".to_string()),
        Target::Version => ("get", "version".to_string()),
        Target::Unknown => ("unknown", String::new()),
    };
    (verb.to_string(), resource)
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let target = parse_target(&path);
    let query: HashMap<String, String> = match Query::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q,
        Err(e) => HashMap::from([("__invalid".to_string(), e.to_string())]),
    };
    let (verb, resource) = verb_and_resource(&parts.method, &target, &query);
    // A create names its object in the body: read it first, for the request log.
    let (body, created) = if parts.method == Method::POST {
        let bytes = match read_bytes(body).await {
            Ok(bytes) => bytes,
            Err(e) => return e.into_response(),
        };
        let created = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string));
        (Body::from(bytes), created)
    } else {
        (body, None)
    };
    let (ns, name) = match &target {
        Target::Collection { ns, .. } => (ns.clone(), None),
        Target::Object { ns, name, .. }
        | Target::PodLog { ns, name }
        | Target::PodStatus { ns, name } => (Some(ns.clone()), Some(name.clone())),
        _ => (None, None),
    };
    let index = shared.record_request(RequestRecord {
        method: parts.method.to_string(),
        path,
        query: raw_query,
        verb: verb.clone(),
        resource: resource.clone(),
        namespace: ns.clone(),
        name: name.clone(),
        created,
        at: chrono::Utc::now(),
        status: 0,
    });

    // Long-running requests (logs) are exempt from API Priority and Fairness
    // and carry no APF headers (recordings 40–49); watches do carry them.
    let exempt = matches!(target, Target::PodLog { .. });
    let mut resp = serve(
        &shared,
        &parts.method,
        &parts.headers,
        target,
        &query,
        body,
        &verb,
        &resource,
        ns,
        name,
    )
    .await
    .unwrap_or_else(ApiError::into_response);
    if exempt {
        resp.extensions_mut().insert(NoFlowControlHeaders);
    }
    add_common_headers(&mut resp);
    shared.set_request_status(index, resp.status().as_u16());
    resp
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    target: Target,
    q: &HashMap<String, String>,
    body: Body,
    verb: &str,
    resource: &str,
    ns: Option<String>,
    name: Option<String>,
) -> Result<Response, ApiError> {
    if let Some(token) = shared.faults.bearer_token() {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(token.as_str()) {
            let mut resp = ApiError::unauthorized().into_response();
            // A 401 is answered before flow control, so it has no APF headers.
            resp.extensions_mut().insert(NoFlowControlHeaders);
            return Ok(resp);
        }
    }
    if let Some(delay) = shared.faults.take_delay(verb, resource) {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = shared.faults.take_api_failure(verb, resource) {
        return Err(match failure {
            ApiFailure::InternalError => {
                ApiError::internal("injected fault: etcdserver: request timed out")
            }
            ApiFailure::TooManyRequests { retry_after_secs } => {
                ApiError::too_many_requests(retry_after_secs)
            }
        });
    }
    if let Some(err) = q.get("__invalid") {
        return Err(ApiError::bad_request(format!("invalid query: {err}")));
    }
    if shared.faults.rbac_enforced()
        && !matches!(target, Target::SelfSubjectAccessReview | Target::Version)
    {
        let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
        if !shared.faults.access_allowed(ns.as_deref(), verb, res, sub) {
            let where_ = match &ns {
                Some(ns) => format!(" in the namespace \"{ns}\""),
                None => " at the cluster scope".to_string(),
            };
            let tail = format!(
                "User \"{}\" cannot {verb} resource \"{resource}\" in API group \"\"{where_}",
                shared.faults.user()
            );
            return Err(ApiError::forbidden(res, name.as_deref(), tail));
        }
    }
    let manager = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
        .unwrap_or_else(|| "unknown".into());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();

    match (method.clone(), target) {
        (Method::GET, Target::Collection { resource, ns }) => {
            if is_true(q, "watch") {
                watch::serve_watch(shared.clone(), resource, ns, q).await
            } else {
                list(shared, resource, ns.as_deref(), q).map(|v| json_response(StatusCode::OK, &v))
            }
        }
        (
            Method::POST,
            Target::Collection {
                resource,
                ns: Some(ns),
            },
        ) => {
            let body = read_json(body).await?;
            let (obj, warnings) = objects::create(shared, resource, &ns, body, &manager)?;
            let mut resp = json_response(StatusCode::CREATED, &obj);
            for w in warnings {
                if let Ok(v) = HeaderValue::from_str(&format!("299 - {}", go_quote(&w))) {
                    resp.headers_mut().append(header::WARNING, v);
                }
            }
            Ok(resp)
        }
        (
            Method::DELETE,
            Target::Collection {
                resource,
                ns: Some(ns),
            },
        ) => {
            let opts = read_delete_options(body, q).await?;
            let listed = list(shared, resource, Some(&ns), q)?;
            let mut deleted = Vec::new();
            for item in listed["items"].as_array().cloned().unwrap_or_default() {
                let name = item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match delete(shared, resource, &ns, &name, opts.grace) {
                    Ok(Deleted::Object(mut o)) => {
                        strip_type_meta(&mut o);
                        deleted.push(o)
                    }
                    Ok(Deleted::Status(_)) => deleted.push(item),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let rv = shared.store().current_rv();
            Ok(json_response(
                StatusCode::OK,
                &list_value(resource, rv, deleted, None),
            ))
        }
        (Method::GET, Target::Object { resource, ns, name }) => {
            let obj = shared.store().get(resource, &ns, &name).cloned();
            obj.map(|o| json_response(StatusCode::OK, &o))
                .ok_or_else(|| ApiError::not_found(resource, &name))
        }
        (Method::GET, Target::PodStatus { ns, name }) => {
            let obj = shared.store().get(Resource::Pods, &ns, &name).cloned();
            obj.map(|o| json_response(StatusCode::OK, &o))
                .ok_or_else(|| ApiError::not_found(Resource::Pods, &name))
        }
        (Method::PUT, Target::Object { resource, ns, name }) => {
            let body = read_json(body).await?;
            let obj = objects::replace(shared, resource, &ns, &name, body)?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::PATCH, Target::Object { resource, ns, name }) => {
            let raw = read_bytes(body).await?;
            let obj = objects::patch(
                shared,
                resource,
                &ns,
                &name,
                &content_type,
                &raw,
                &manager,
                q,
            )?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::DELETE, Target::Object { resource, ns, name }) => {
            let opts = read_delete_options(body, q).await?;
            match delete(shared, resource, &ns, &name, opts.grace)? {
                Deleted::Object(o) => Ok(json_response(StatusCode::OK, &o)),
                Deleted::Status(s) => Ok(json_response(StatusCode::OK, &s)),
            }
        }
        (Method::GET, Target::PodLog { ns, name }) => {
            logs::serve_log(shared.clone(), &ns, &name, q).await
        }
        (Method::POST, Target::SelfSubjectAccessReview) => {
            let body = read_json(body).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &self_subject_access_review(shared, body, &manager),
            ))
        }
        (Method::GET, Target::Version) => Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "28", "gitVersion": "v1.28.0", "platform": "linux/amd64"}),
        )),
        (_, Target::Unknown) => Err(ApiError::unknown_path()),
        _ => Err(ApiError::method_not_supported()),
    }
}

/// Marker: leave out the API Priority and Fairness headers (401 answers).
#[derive(Clone, Copy)]
struct NoFlowControlHeaders;

fn add_common_headers(resp: &mut Response) {
    let apf = resp.extensions().get::<NoFlowControlHeaders>().is_none();
    let h = resp.headers_mut();
    h.insert(
        "audit-id",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("0")),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    if apf {
        h.insert(
            "x-kubernetes-pf-flowschema-uid",
            HeaderValue::from_static("812c3505-809f-49fb-aba2-8a13f24049bb"),
        );
        h.insert(
            "x-kubernetes-pf-prioritylevel-uid",
            HeaderValue::from_static("9c201ca0-fc6b-423f-8a11-eae7fb1452d5"),
        );
    }
    let date = Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = HeaderValue::from_str(&date) {
        h.insert(header::DATE, v);
    }
}

/// Quotes like Go's `%q`, as the `Warning` header does.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

async fn read_bytes(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("unable to read request body: {e}")))
}

async fn read_json(body: Body) -> Result<Value, ApiError> {
    let raw = read_bytes(body).await?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized: couldn't get version/kind; json parse error: {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized: not a JSON object",
        ));
    }
    Ok(v)
}

struct DeleteOptions {
    grace: Option<i64>,
}

async fn read_delete_options(
    body: Body,
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let raw = read_bytes(body).await?;
    let mut grace = None;
    if !raw.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        grace = v["gracePeriodSeconds"].as_i64();
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if grace.is_some_and(|g| g < 0) {
        grace = Some(0);
    }
    Ok(DeleteOptions { grace })
}

/// Removes `kind` and `apiVersion` from an item, as list items lack them.
fn strip_type_meta(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
}

fn list_value(
    resource: Resource,
    rv: u64,
    items: Vec<Value>,
    page: Option<(String, usize)>,
) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some((cont, remaining)) = page {
        meta.insert("continue".into(), json!(cont));
        meta.insert("remainingItemCount".into(), json!(remaining));
    }
    json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": "v1",
        "metadata": Value::Object(meta),
        "items": items,
    })
}

/// The selectors of a list or watch request.
pub fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(
    shared: &Shared,
    resource: Resource,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(q)?;
    let store = shared.store();
    if q.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
        && let Some(rv) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && rv < store.history_start()
    {
        return Err(ApiError::gone(
            "The resourceVersion for the provided list is too old.",
        ));
    }
    let mut items: Vec<Value> = store
        .iter(resource, ns)
        .filter(|o| labels.matches(o) && fields.matches(o))
        .cloned()
        .collect();
    let mut rv = store.current_rv();
    drop(store);

    // Pagination: the token holds the RV of the first page and the key to
    // start after, as the real server's (base64 of JSON) does.
    let mut start_after: Option<String> = None;
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let decoded = objects::base64_decode(token.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?;
        rv = decoded["rv"].as_u64().unwrap_or(rv);
        start_after = decoded["start"]
            .as_str()
            .map(|s| s.trim_end_matches('\u{0}').to_string());
    }
    if let Some(start) = &start_after {
        items.retain(|o| item_key(o, ns).as_str() > start.as_str());
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let page = match limit {
        Some(limit) if items.len() > limit => {
            let rest = items.split_off(limit);
            let last = item_key(items.last().unwrap_or(&Value::Null), ns);
            let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last}\u{0}")});
            Some((
                objects::base64_encode_url(token.to_string().as_bytes()),
                rest.len(),
            ))
        }
        _ => None,
    };
    for item in &mut items {
        strip_type_meta(item);
    }
    Ok(list_value(resource, rv, items, page))
}

/// The key an item sorts by: its name within a namespace, `ns/name` across namespaces.
fn item_key(o: &Value, ns: Option<&str>) -> String {
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    match ns {
        Some(_) => name.to_string(),
        None => format!(
            "{}/{name}",
            o["metadata"]["namespace"].as_str().unwrap_or_default()
        ),
    }
}

/// What a DELETE answers: pods and objects with finalizers answer the object,
/// others a `Status` of `Success` (recording 70).
pub enum Deleted {
    Object(Value),
    Status(Value),
}

/// Deletes an object as the API server does; pods go through graceful
/// deletion and the kubelet. Dependents (ownerReferences) are collected after.
pub(super) fn delete(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Deleted, ApiError> {
    if resource == Resource::Pods {
        return delete_pod(shared, ns, name, grace).map(Deleted::Object);
    }
    let now = objects::now_rfc3339();
    let mut store = shared.store();
    let existing = store
        .get(resource, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let has_finalizers = existing["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let uid = existing["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let result = if has_finalizers {
        // Stays (terminating) until a controller removes its finalizers.
        let obj = store.update(resource, ns, name, |o| {
            let m = &mut o["metadata"];
            if m.get("deletionTimestamp").is_none() {
                m["deletionTimestamp"] = json!(now);
                m["deletionGracePeriodSeconds"] = json!(0);
            }
            Ok(())
        })?;
        Deleted::Object(obj)
    } else {
        store.remove(resource, ns, name)?;
        Deleted::Status(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": resource.plural(), "uid": uid},
        }))
    };
    drop(store);
    if !has_finalizers {
        objects::collect_dependents(shared, &uid);
    } else if resource == Resource::PersistentVolumeClaims {
        objects::release_pvc_when_unused(shared.clone(), ns.to_string(), name.to_string());
    }
    Ok(result)
}

/// Graceful pod deletion: a pod on no node, a finished pod, or grace 0 goes at
/// once (with `deletionTimestamp` set in the answer); a running pod gets
/// `deletionTimestamp` = now + grace and the kubelet stops it.
pub(super) fn delete_pod(
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Value, ApiError> {
    let requested_at = Utc::now();
    let mut store = shared.store();
    let pod = store
        .get(Resource::Pods, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(Resource::Pods, name))?;
    if pod["metadata"].get("deletionTimestamp").is_some() && grace.is_none_or(|g| g > 0) {
        return Ok(pod);
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let on_node = pod["spec"]["nodeName"].is_string();
    let default_grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    let mut grace = grace.unwrap_or(default_grace);
    if !on_node || phase == "Succeeded" || phase == "Failed" {
        grace = 0;
    }
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deletion_ts = objects::rfc3339(requested_at + chrono::Duration::seconds(grace));
    let updated = store.update(Resource::Pods, ns, name, |o| {
        o["metadata"]["deletionTimestamp"] = json!(deletion_ts);
        o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        Ok(())
    })?;
    if grace == 0 {
        store.remove(Resource::Pods, ns, name)?;
    }
    drop(store);
    kubelet::notify_delete(shared, &uid, grace, requested_at);
    if grace == 0 {
        objects::collect_dependents(shared, &uid);
    }
    Ok(updated)
}

fn self_subject_access_review(shared: &Shared, body: Value, manager: &str) -> Value {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let attrs = &spec["resourceAttributes"];
    let verb = attrs["verb"].as_str().unwrap_or_default();
    let resource = attrs["resource"].as_str().unwrap_or_default();
    let sub = attrs["subresource"].as_str().unwrap_or_default();
    let allowed = shared
        .faults
        .access_allowed(attrs["namespace"].as_str(), verb, resource, sub);
    let status = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"piculet/ci\" of Role \"piculet\" to ServiceAccount \"piculet/ci\""})
    } else {
        // A denial by "no rule matched" has neither `reason` nor `denied` (recording 54).
        json!({"allowed": false})
    };
    let fields = objects::fields_v1(&json!({"spec": spec.clone()}));
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {
            "creationTimestamp": null,
            "managedFields": [{
                "manager": manager, "operation": "Update", "apiVersion": "authorization.k8s.io/v1",
                "time": objects::now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields,
            }],
        },
        "spec": spec,
        "status": status,
    })
}
