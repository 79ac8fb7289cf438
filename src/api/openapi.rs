//! The OpenAPI document, generated from the handlers and types by utoipa, then refined where
//! utoipa's attributes cannot say what the server does: optional security on a tokenless
//! server, parameter constraints taken from the parser's own constants, event streams as
//! strings with their events listed, YAML bodies as text, and problem examples built from the
//! errors the server really answers with.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ApiError;
use super::{error, events, follow, health, host, lint, logs, metrics, pipelines, render};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "piculet",
        description = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes, \
                       with status and live logs over REST and Server-Sent Events.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        pipelines::create_pipeline,
        pipelines::list_pipelines,
        pipelines::get_pipeline,
        pipelines::cancel_pipeline,
        pipelines::retry_pipeline,
        events::get_pipeline_events,
        logs::get_step_logs,
        lint::lint,
        render::render,
        health::healthz,
        health::readyz,
        metrics::metrics,
    ),
    components(schemas(
        error::Problem,
        crate::pipeline::Diagnostic,
        logs::LogEnd,
        crate::model::LogLine,
        crate::model::Event,
        events::PipelineEnd
    )),
    modifiers(&BearerAuth, &MisdirectedRequest, &DatabaseTimeout),
    tags(
        (name = "pipelines", description = "Submit, inspect, follow, cancel and retry pipelines"),
        (name = "logs", description = "Step logs, stored and live"),
        (name = "operations", description = "Probes and the API document")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "One of PICULET_API_TOKENS. A server without tokens serves loopback \
                             only and takes requests without one, hence the empty alternative \
                             in the document's security.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// Every operation but the probes is refused with 421 for a `Host` the server does not answer
/// to; said once here rather than on every handler.
struct MisdirectedRequest;

impl Modify for MisdirectedRequest {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let response = ResponseBuilder::new()
            .description(
                "A Host this server does not answer to: without API tokens, a name other than a \
                 loopback one or one of PICULET_ALLOWED_HOSTS",
            )
            .content(
                error::PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        for_each_operation(openapi, &host::PROBES, |responses| {
            responses.insert("421".into(), response.clone().into());
        });
    }
}

/// Calls `f` with the responses of every operation whose path is not in `except`.
fn for_each_operation(
    openapi: &mut utoipa::openapi::OpenApi,
    except: &[&str],
    mut f: impl FnMut(&mut BTreeMap<String, RefOr<Response>>),
) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if except.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            f(&mut operation.responses.responses);
        }
    }
}

/// Operations that never touch the database, so never answer its 503.
const WITHOUT_DATABASE: [&str; 3] = ["/api/v1/healthz", "/api/v1/lint", "/api/v1/render"];

/// Every operation that reads or writes the database answers 503 `unavailable` with
/// `Retry-After` when its statement runs past `PICULET_DB_READ_TIMEOUT` or
/// `PICULET_DB_WRITE_TIMEOUT`; said once here, and added to a 503 a handler documents already.
struct DatabaseTimeout;

const DATABASE_TIMEOUT: &str = "The database did not answer within PICULET_DB_READ_TIMEOUT or \
     PICULET_DB_WRITE_TIMEOUT (`unavailable`, with `Retry-After`)";

impl Modify for DatabaseTimeout {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let response = ResponseBuilder::new()
            .description(DATABASE_TIMEOUT)
            .content(
                error::PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        for_each_operation(openapi, &WITHOUT_DATABASE, |responses| {
            match responses.get_mut("503") {
                Some(RefOr::T(existing)) if !existing.description.contains("database") => {
                    existing.description = format!(
                        "{}; or the database did not answer in time (`unavailable`, with \
                         `Retry-After`)",
                        existing.description
                    );
                }
                Some(_) => {}
                None => {
                    responses.insert("503".into(), response.clone().into());
                }
            }
        });
    }
}

/// The document as served at `/api/v1/openapi.json`.
pub fn value() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi())
        .unwrap_or_else(|e| json!({"error": format!("the API document did not serialize: {e}")}));
    refine(&mut doc);
    doc
}

/// The document as a server with this many label filters allowed (`PICULET_MAX_LABEL_FILTERS`)
/// serves it: the checked-in one states the default.
pub fn served(max_label_filters: usize) -> Value {
    let mut doc = value();
    for_each_operation_value(&mut doc, |_, _, operation| {
        for parameter in operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "label")
        {
            parameter["schema"]["maxItems"] = json!(max_label_filters);
        }
    });
    doc
}

/// The document as checked in under `openapi/openapi.json` and printed by `piculet openapi`.
pub fn document() -> String {
    let mut text = serde_json::to_string_pretty(&value())
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Everything said at the JSON level, after utoipa.
fn refine(doc: &mut Value) {
    for_each_operation_value(doc, |_, _, operation| {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The requirement is said once, document-wide (see `refine`'s end); the probes opt
        // out with an empty list. Said per operation, it is the same requirement to the
        // specification, but openapi-python-client then demands a token-carrying client for
        // every call, which a tokenless server has no token for.
        if operation.get("security").is_some() {
            if let Some(operation) = operation.as_object_mut() {
                operation.remove("security");
            }
        } else {
            operation["security"] = json!([]);
        }
        if let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        {
            for parameter in parameters {
                constrain(parameter);
            }
        }
        if let Some(content) = operation
            .pointer_mut("/requestBody/content")
            .and_then(Value::as_object_mut)
        {
            yaml_body(content);
        }
        if let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        {
            document_statuses(&id, responses);
            if matches!(id.as_str(), "create_pipeline" | "retry_pipeline")
                && let Some(created) = responses.get_mut("201")
            {
                created["links"] = pipeline_links();
            }
            for (status, response) in responses.iter_mut() {
                let Some(content) = response.get_mut("content").and_then(Value::as_object_mut)
                else {
                    continue;
                };
                streams(&id, content);
                if let Some(problem) = content.get_mut(error::PROBLEM_JSON) {
                    problem["examples"] = problem_examples(&id, status);
                }
            }
        }
    });
    // A tokenless server takes requests without credentials: `{}` says a request may carry
    // none, the bearer alternative says what a server with tokens wants.
    doc["security"] = json!([{}, {"bearer": []}]);
    lint_takes_any_submission(doc);
    if let Some(submission) = doc.pointer_mut("/components/schemas/Submission") {
        submission_rules(submission);
    }
}

/// `POST /lint` reports what breaks a submission's rules rather than refusing it, so its body
/// is a submission of the right shape without those rules: `LintSubmission`, the same object
/// before [`submission_rules`]. A body of the wrong shape is still refused (422).
fn lint_takes_any_submission(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(mut lint) = schemas.get("Submission").cloned() else {
        return;
    };
    lint["description"] = json!(
        "A submission as `POST /pipelines` takes it. Lint reports, rather than refuses, what \
         breaks the rules of `Submission` (no pipeline, a namespace that is no DNS label, ...)."
    );
    schemas.insert("LintSubmission".into(), lint);
    if let Some(body) =
        doc.pointer_mut("/paths/~1api~1v1~1lint/post/requestBody/content/application~1json")
    {
        body["schema"] = schema_ref("LintSubmission");
    }
}

/// Calls `f` with the path, the method and the operation of every operation of the document.
fn for_each_operation_value(doc: &mut Value, mut f: impl FnMut(&str, &str, &mut Value)) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            f(path, method, operation);
        }
    }
}

/// Where a created pipeline leads: OpenAPI links, which tell a tester (and a reader) how the
/// ids of the answer feed the other operations, the step routes included.
fn pipeline_links() -> Value {
    let pipeline = |operation: &str| json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}});
    json!({
        "GetPipeline": pipeline("get_pipeline"),
        "GetPipelineEvents": pipeline("get_pipeline_events"),
        "CancelPipeline": pipeline("cancel_pipeline"),
        "RetryPipeline": pipeline("retry_pipeline"),
        "GetFirstStepLogs": {
            "operationId": "get_step_logs",
            "parameters": {"id": "$response.body#/workflows/0/steps/0/id"},
        },
    })
}

/// The largest number `Last-Event-ID` and `after` take: the server reads them as `i64`.
const MAX_SEQUENCE: i64 = i64::MAX;

/// A parameter's schema, as strict as the server's parser.
fn constrain(parameter: &mut Value) {
    let sequence =
        json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_SEQUENCE});
    match parameter["name"].as_str().unwrap_or_default() {
        "Idempotency-Key" => {
            parameter["schema"] = json!({
                "type": "string",
                "minLength": 1,
                "maxLength": pipelines::MAX_IDEMPOTENCY_KEY,
                "pattern": pipelines::IDEMPOTENCY_KEY_PATTERN,
            });
        }
        "Last-Event-ID" | "after" => parameter["schema"] = sequence,
        "label" => {
            parameter["schema"] = json!({
                "type": "array",
                "items": {"type": "string", "pattern": pipelines::label_filter_pattern()},
                "maxItems": crate::config::default_max_label_filters(),
            });
        }
        _ => {}
    }
}

/// A YAML body is one pipeline file: text, which generators take as a string or a file, and
/// which a client sends as it is rather than encoded as YAML again.
fn yaml_body(content: &mut Map<String, Value>) {
    if let Some(yaml) = content.get_mut("application/yaml") {
        yaml["schema"] = json!({
            "type": "string",
            "format": "binary",
            "contentMediaType": "application/yaml",
            "description": "One pipeline file, as UTF-8 YAML text",
        });
    }
}

/// A `$ref` to a component schema.
fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The events of each event stream: name, what it carries, and the schema of its data.
fn events_of(operation_id: &str) -> Option<Value> {
    let event = |description: &str, data: &str| json!({"description": description, "data": schema_ref(data)});
    match operation_id {
        "get_step_logs" => Some(json!({
            "message": event("One log line; the event's `id` is its line number", "LogLine"),
            "end": event("The step finished; the last event of the stream", "LogEnd"),
        })),
        "get_pipeline_events" => Some(json!({
            "status": event(
                "A state change of the pipeline, a workflow or a step; the event's `id` is its \
                 sequence number",
                "Event",
            ),
            "end": event("The pipeline finished; the last event of the stream", "PipelineEnd"),
        })),
        _ => None,
    }
}

/// Streams are strings to a generated client, which reads them with an SSE or line reader;
/// what they carry is listed beside the schema: `x-sse-events` names every event type with
/// the schema of its JSON data, and `x-ndjson-item` the schema of each JSON line.
fn streams(operation_id: &str, content: &mut Map<String, Value>) {
    if let Some(sse) = content.get_mut(follow::EVENT_STREAM) {
        sse["schema"] = json!({
            "type": "string",
            "description": "Server-Sent Events, their data compact JSON on one line; the events \
                            are listed in `x-sse-events`. A quiet stream sends a `: keep-alive` \
                            comment every 15 s. Reconnect with `Last-Event-ID` for exactly the \
                            events missed.",
        });
        if let Some(events) = events_of(operation_id) {
            sse["x-sse-events"] = events;
        }
    }
    if let Some(lines) = content.get_mut(logs::NDJSON) {
        lines["schema"] = json!({
            "type": "string",
            "description": "JSON lines: one `LogLine` (see `x-ndjson-item`) per line",
        });
        lines["x-ndjson-item"] = schema_ref("LogLine");
    }
}

/// Statuses every operation may answer, added where a handler's attributes do not list them.
fn document_statuses(operation_id: &str, responses: &mut Map<String, Value>) {
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {error::PROBLEM_JSON: {"schema": schema_ref("Problem")}},
        })
    };
    // The body limit is checked before routing, by the announced length, whatever the route.
    responses
        .entry("413")
        .or_insert_with(|| problem("A body announced larger than PICULET_MAX_BODY_SIZE"));
    if operation_id != "healthz" {
        responses.entry("500").or_insert_with(|| {
            problem(
                "A fault of piculet's; the detail names nothing internal, the server log has it \
                 under the response's x-request-id",
            )
        });
    }
    for (status, response) in responses.iter_mut() {
        if status == "503" {
            response["headers"]["Retry-After"] = json!({
                "description": "Seconds to wait before retrying (with `busy` and the database's \
                                `unavailable`)",
                "schema": {"type": "integer", "minimum": 1},
            });
        }
    }
}

/// The errors an operation answers with a status, as named examples built from the very
/// errors the handlers return.
fn problem_examples(operation_id: &str, status: &str) -> Value {
    let id = "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10";
    let body_op = matches!(
        operation_id,
        "create_pipeline" | "lint_pipeline" | "render_pipeline"
    );
    let id_op = matches!(
        operation_id,
        "get_pipeline"
            | "cancel_pipeline"
            | "retry_pipeline"
            | "get_pipeline_events"
            | "get_step_logs"
    );
    let mut errors: Vec<(&str, ApiError)> = Vec::new();
    match status {
        "400" => errors.extend(bad_request_examples(operation_id, body_op, id_op)),
        "401" => errors.push((
            "unauthorized",
            ApiError::Unauthorized(
                "send Authorization: Bearer <token> with one of the tokens in PICULET_API_TOKENS",
            ),
        )),
        "404" => errors.push((
            "not-found",
            ApiError::NotFound(if operation_id == "get_step_logs" {
                format!("there is no step {id}")
            } else {
                format!("there is no pipeline {id}")
            }),
        )),
        "408" => errors.push((
            "request-timeout",
            ApiError::BodyTimeout(Duration::from_secs(30)),
        )),
        "413" => errors.push(("payload-too-large", ApiError::PayloadTooLarge(4 << 20))),
        "415" => errors.push((
            "unsupported-media-type",
            ApiError::UnsupportedMediaType(
                "Content-Type text/plain is not accepted; send application/json (a submission) \
                 or application/yaml (one pipeline file)"
                    .into(),
            ),
        )),
        "421" => errors.push((
            "misdirected-request",
            ApiError::MisdirectedRequest(
                "this server answers only to loopback names without API tokens".into(),
            ),
        )),
        "422" => errors.extend(validation_examples(operation_id)),
        "500" => errors.push(("internal", ApiError::Fault("an example fault".into()))),
        "503" => errors.extend(unavailable_examples(operation_id, body_op)),
        _ => {}
    }
    let mut examples = Map::new();
    for (name, error) in errors {
        let value = serde_json::to_value(error.problem()).unwrap_or(Value::Null);
        examples.insert(name.to_string(), json!({"value": value}));
    }
    Value::Object(examples)
}

/// The 400 answers of an operation: a malformed body, a bad header, id or query.
fn bad_request_examples(
    operation_id: &str,
    body_op: bool,
    id_op: bool,
) -> Vec<(&'static str, ApiError)> {
    let mut errors = Vec::new();
    if body_op {
        errors.push((
            "malformed-body",
            ApiError::MalformedBody(
                "the body is not valid JSON: EOF while parsing an object at line 1 \
                 column 12; check the syntax, or send a pipeline file with \
                 Content-Type: application/yaml"
                    .into(),
            ),
        ));
    }
    if operation_id == "create_pipeline" {
        errors.push((
            "invalid-header",
            ApiError::InvalidHeader(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters without \
                 spaces, e.g. a UUID",
                pipelines::MAX_IDEMPOTENCY_KEY
            )),
        ));
    }
    if id_op {
        errors.push(("invalid-id", ApiError::InvalidId("42".into())));
    }
    if matches!(operation_id, "get_pipeline_events" | "get_step_logs") {
        errors.push((
            "invalid-header",
            ApiError::InvalidHeader(
                "Last-Event-ID \"x\" is not a number; send back the id of the last \
                 event received"
                    .into(),
            ),
        ));
    }
    if matches!(
        operation_id,
        "list_pipelines" | "get_pipeline_events" | "get_step_logs"
    ) {
        errors.push((
            "invalid-query",
            ApiError::InvalidQuery(
                "unknown query parameter \"page\"; see the operation's parameters".into(),
            ),
        ));
    }
    errors
}

/// The 422 answers of an operation: a pipeline that does not validate, a reused key.
fn validation_examples(operation_id: &str) -> Vec<(&'static str, ApiError)> {
    let mut errors = Vec::new();
    errors.push((
        "validation-failed",
        error::validation(
            vec![crate::pipeline::Diagnostic {
                config: "build".into(),
                pointer: "/steps/0/comands".into(),
                line: Some(4),
                column: Some(5),
                message: "unknown key \"comands\", did you mean \"commands\"?".into(),
            }],
            vec![],
        ),
    ));
    if operation_id == "create_pipeline" {
        errors.push((
            "idempotency-key-reused",
            ApiError::IdempotencyKeyReused("build-42".into()),
        ));
    }
    errors
}

/// The 503 answers of an operation: the database, or the planning slots, busy.
fn unavailable_examples(operation_id: &str, body_op: bool) -> Vec<(&'static str, ApiError)> {
    let mut errors = Vec::new();
    if operation_id == "readyz" {
        errors.push((
            "unavailable",
            ApiError::Unavailable("the database does not answer".into()),
        ));
    } else {
        errors.push((
            "unavailable",
            ApiError::DatabaseBusy {
                detail: "the database did not answer within 5s (PICULET_DB_READ_TIMEOUT); \
                         retry after the Retry-After seconds"
                    .into(),
                retry_after: 5,
            },
        ));
    }
    if body_op || operation_id == "retry_pipeline" {
        errors.push((
            "busy",
            ApiError::Busy {
                slots: 2,
                waited: Duration::from_secs(10),
                retry_after: 10,
            },
        ));
    }
    errors
}

/// What a submission needs, as the server checks it: a non-empty `configs`, or a `pipeline`
/// object with no `configs` beside it; a namespace that is a DNS label.
fn submission_rules(submission: &mut Value) {
    submission["if"] = json!({
        "required": ["pipeline"],
        "properties": {"pipeline": {"type": "object"}},
    });
    submission["then"] = json!({"properties": {"configs": {"maxItems": 0}}});
    submission["else"] = json!({
        "required": ["configs"],
        "properties": {"configs": {"minItems": 1}},
    });
    if let Some(namespace) = submission.pointer_mut("/properties/namespace") {
        namespace["pattern"] = json!(crate::submission::NAMESPACE_PATTERN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_limits(doc: &mut Value) -> Vec<Value> {
        let mut limits = Vec::new();
        for_each_operation_value(doc, |_, _, operation| {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["name"] == "label" {
                    limits.push(parameter["schema"]["maxItems"].clone());
                }
            }
        });
        limits
    }

    #[test]
    fn the_served_document_states_the_servers_label_filter_limit() {
        let default = label_limits(&mut value());
        assert_eq!(
            default,
            [json!(crate::config::default_max_label_filters())],
            "one operation filters by label"
        );
        assert_eq!(label_limits(&mut served(3)), [json!(3)]);
    }
}
